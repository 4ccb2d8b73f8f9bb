"""Before/after check of a refactor: every generation path and training stage on tiny weights, bit for bit.

    python tests/generation_snapshot.py write OUT.safetensors     # run the matrix, store every output
    python tests/generation_snapshot.py compare A.safetensors B.safetensors

``write`` makes tiny random weights (``python -m colorize make-tiny-weights``, seed 0) and runs, on the CPU in
float32 with one thread: v1 with every sampler, guidance on both conditions, per-level and per-block strengths,
the guidance window, reference padding, cropping and attention injection; v1.5 with BG, FG and both enhance, a
separate background and the LoRA scale; v2 with BG, FG, style and a separate background; and two optimiser
steps of every training stage (losses and a checksum of the trained weights). ``compare`` prints each entry
whose tensors are not bit-identical and exits 1 if there is one. It uses only entry points that exist before
and after the restructuring, so the same file runs on both trees (run it with the tree's root on
``sys.path``, as ``python tests/generation_snapshot.py`` does).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _enhance_settings():  # type: ignore[no-untyped-def]
    try:
        from colorize.settings import EnhanceSettings
    except ImportError:  # the tree before the restructuring
        from colorize.settings import EnhanceSettings
    return EnhanceSettings


def _images(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sketch = torch.ones(1, 3, 96, 80)
    sketch[:, :, 20:70, 18:22] = 0.0
    sketch[:, :, 20:24, 18:60] = 0.0
    sketch[:, :, 66:70, 18:60] = 0.0
    sketch[:, :, 20:70, 56:60] = 0.0
    mask = torch.zeros(1, 96, 80)
    mask[:, 20:70, 18:60] = 1.0
    return {"sketch": sketch, "reference": torch.rand(1, 3, 72, 64, generator=g),
            "background": torch.rand(1, 3, 64, 64, generator=g), "sketch_mask": mask,
            "reference_mask": (torch.rand(1, 72, 64, generator=g) > 0.5).float(),
            "background_mask": (torch.rand(1, 64, 64, generator=g) > 0.7).float()}


def generation_matrix(models_dir: Path) -> dict[str, torch.Tensor]:
    from colorize.pipeline import Colorizer
    from colorize.settings import GenerationSettings

    enhance_cls = _enhance_settings()
    clip = next((models_dir / "clip_vision").glob("*.safetensors"))
    files = {"mult": "mult-eps-ft", "switch": "switch-eps", "v2": "v2-full"}
    out: dict[str, torch.Tensor] = {}
    im = _images(3)
    base = dict(steps=3, seed=11, width=128, height=128)
    cases: dict[str, list[tuple[str, dict, dict]]] = {
        "mult": [
            ("default", {}, {}),
            ("euler_cfg", dict(sampler="euler", scheduler="karras", reference_cfg=3.0, sketch_cfg=2.0), {}),
            ("euler_a", dict(sampler="euler_ancestral", sketch_cfg=1.5), {}),
            ("dpmpp_2m", dict(sampler="dpmpp_2m", level_strengths={"encoder": 0.7, "middle": 1.3, "low": 0.9},
                              reference_strength=0.8), {}),
            ("dpmpp_2m_sde", dict(sampler="dpmpp_2m_sde", block_strengths=[0.5 + i / 16 for i in range(16)]), {}),
            ("ddim", dict(sampler="ddim", sketch_strength=0.7), {}),
            ("window", dict(guidance_start=0.2, guidance_end=0.8, no_guidance=(0.4, 0.5)), {}),
            ("pad_crop", dict(reference_pad_scale=1.4, crop_result=True), {}),
            ("injection", dict(injection=True, injection_fidelity=0.3, injection_control=1.0, sketch_cfg=2.0), {}),
        ],
        "switch": [
            ("plain", {}, {}),
            ("bg", {}, dict(background_enhance=True, use=("sketch_mask", "reference_mask"))),
            ("fg", dict(reference_strength=0.7), dict(foreground_enhance=True, fg_scale=1.2, use=())),
            ("both", dict(sketch_cfg=2.0), dict(background_enhance=True, foreground_enhance=True, merge_scale=0.3,
                                                 lora_scale=0.5, use=("sketch_mask", "reference_mask"))),
            ("background", {}, dict(background_enhance=True, remove_background_foreground=True,
                                    use=("sketch_mask", "background", "background_mask"))),
            ("bg_injection", dict(injection=True), dict(background_enhance=True,
                                                         use=("sketch_mask", "reference_mask"))),
        ],
        "v2": [
            ("plain", {}, {}),
            ("bg", {}, dict(background_enhance=True, background_factor=0.8, use=("sketch_mask", "reference_mask"))),
            ("fg", {}, dict(foreground_enhance=True, use=())),
            ("style", dict(sketch_cfg=2.0), dict(style_enhance=True, use=())),
            ("all_background", {}, dict(background_enhance=True, style_enhance=True, merge_scale=0.4,
                                        use=("sketch_mask", "background", "reference_mask"))),
            ("window_injection", dict(guidance_end=0.7, injection=True),
             dict(background_enhance=True, use=("sketch_mask", "reference_mask"))),
        ],
    }
    for version, rows in cases.items():
        model = Colorizer.from_files(models_dir / "colorizediffusion" / f"{files[version]}.safetensors", clip,
                                     device="cpu", precision="fp32")
        for name, settings, enhance in rows:
            enhance = dict(enhance)
            use = enhance.pop("use", ())
            kwargs = {k: im[k] for k in use}
            if enhance:
                kwargs["enhance"] = enhance_cls(**enhance)
            image = model.colorize(im["sketch"], im["reference"], GenerationSettings(**{**base, **settings}),
                                   **kwargs)
            out[f"{version}/{name}"] = image
    return out


def training_matrix(work: Path, models_dir: Path) -> dict[str, torch.Tensor]:
    from training.config import config_from_dict
    from training.engine import Trainer
    from training.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(work / "data", 4, (72, 88), "folders", seed=1, masks=True)
    ckpt = models_dir / "colorizediffusion"
    clip = next((models_dir / "clip_vision").glob("*.safetensors"))
    inits = {"stage1_noisy": "mult-eps-ft", "switch_fgbg": "switch-eps", "v2_background": "v2-full",
             "v2_style": "v2-full"}
    out: dict[str, torch.Tensor] = {}
    for stage, init in inits.items():
        cfg = {"stage": stage, "model": {"init": str(ckpt / f"{init}.safetensors"), "clip": str(clip)},
               "data": {"root": str(data)}, "augment": {"buckets": [[64, 64]], "load_size": 80},
               "optim": {"lr": 1e-2},
               "run": {"out_dir": str(work / stage), "max_steps": 2, "batch_size": 2, "precision": "fp32",
                       "device": "cpu", "log_every": 0, "save_every": 0, "export": False, "resume": "none"}}
        trainer = Trainer(config_from_dict(cfg))
        result = trainer.train()
        out[f"train/{stage}/losses"] = torch.tensor(result.losses, dtype=torch.float64)
        state = trainer.mods.denoiser.state_dict()
        out[f"train/{stage}/weights"] = torch.stack([state[k].double().sum() for k in sorted(state)])
    return out


def write(path: Path) -> None:
    from safetensors.torch import save_file

    from colorize.tiny import write_tiny_weights

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_tiny_weights(work / "models", versions=("mult", "switch", "v2"))
        out = {**generation_matrix(work / "models"), **training_matrix(work, work / "models")}
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    print(f"wrote {len(out)} entries to {path}")


def compare(a: Path, b: Path) -> int:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    bad = sorted(k for k in x.keys() | y.keys() if k not in x or k not in y or not torch.equal(x[k], y[k]))
    for k in bad:
        if k in x and k in y and x[k].shape == y[k].shape:
            print(f"differs: {k} (max |diff| {float((x[k].double() - y[k].double()).abs().max()):.3g})")
        else:
            print(f"differs: {k} (missing or another shape)")
    print(f"{len(x.keys() & y.keys()) - len([k for k in bad if k in x and k in y])} of {len(x.keys() | y.keys())} "
          "entries bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
