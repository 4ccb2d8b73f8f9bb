"""Training loop on CPU with tiny weights and synthetic data: stages, frozen modules, loss goes down, export loads
in ``colorize`` and colorizes, resume is bitwise identical, accumulation matches a larger batch."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import make_trainer

from colorize.config import TINY_MULT, ColorizerConfig
from training.config import TrainConfig, config_from_dict, load_config
from training.stages import STAGES, apply_trainable, get_stage
from training.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
SMALL: ColorizerConfig = TINY_MULT  # non-standard sizes: the export must carry its config in the metadata


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from colorize.tiny import write_tiny_weights

    base = tmp_path_factory.mktemp("train")
    files = write_tiny_weights(base / "models", SMALL, seed=0)
    return {
        "ckpt": files["mult-eps-ft"],
        "clip": files["clip-vit-h-14"],
        "data": make_synthetic_dataset(base / "data", 12, (72, 88), "folders", seed=1),
        "base": base,
    }


def small_config(assets: dict[str, Path], out: Path, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "stage": "stage1_noisy",
        "model": {"init": str(assets["ckpt"]), "clip": str(assets["clip"])},
        "data": {"root": str(assets["data"])},
        "augment": {"buckets": [[64, 64]], "load_size": 80},
        "optim": {"lr": 1e-3},
        "run": {"out_dir": str(out), "max_steps": 4, "batch_size": 2, "precision": "fp32", "device": "cpu",
                "log_every": 1, "save_every": 0, "export": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


# ------------------------------------------------------------------------------------------ configs and stages
def test_stage_defaults_follow_thesis() -> None:
    s1 = config_from_dict({"stage": "stage1_noisy"})
    s2 = config_from_dict({"stage": "stage2_finetune"})
    assert (s1.objective.noisy_reference, s1.objective.reference_drop) == (True, 0.1)  # §5.4.1
    assert (s2.objective.noisy_reference, s2.objective.reference_drop) == (False, 0.5)  # §5.4.2, Eq. 5.3
    assert s1.objective.noisy_t_switch == 900 and s1.optim.lr == 1e-5
    over = config_from_dict({"stage": "stage2_finetune", "objective": {"reference_drop": 0.3}}, ["run.max_steps=7"])
    assert over.objective.reference_drop == 0.3 and over.run.max_steps == 7


def test_placeholder_stages_stop_early_with_their_reason(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A stage registered as a placeholder (``unavailable="reason"``) fails early everywhere, giving its reason."""
    from training.stages import Stage
    from training.train import main

    reason = "its training data is not released"
    stub = Stage(name="future_stage", title="a future stage", version="v9", trainable=("unet",), unavailable=reason)
    monkeypatch.setitem(STAGES, stub.name, stub)
    with pytest.raises(NotImplementedError, match=reason):
        get_stage(stub.name)
    with pytest.raises(NotImplementedError, match=reason):
        config_from_dict({"stage": stub.name})
    with pytest.raises(NotImplementedError, match=reason):
        apply_trainable(stub, {})
    assert main(["--config", str(REPO / "training/configs/tiny_smoke.json"), "--set", f"stage={stub.name}"]) == 2
    assert reason in capsys.readouterr().err
    assert all(s.unavailable is None for n, s in STAGES.items() if n != stub.name)  # every shipped stage works


def test_config_errors_and_shipped_configs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict({"run": {"max_stepz": 1}})
    with pytest.raises(ValueError, match="unknown training stage"):
        config_from_dict({"stage": "stage3"})
    with pytest.raises(ValueError, match="multiple of 64"):
        config_from_dict({"augment": {"buckets": [[100, 64]]}})
    with pytest.raises(ValueError, match="load_size"):
        config_from_dict({"augment": {"buckets": [[1024, 1024]]}})
    shipped = sorted((REPO / "training" / "configs").glob("*.json"))
    assert {p.stem for p in shipped} >= {"stage1_noisy", "stage2_finetune", "tiny_smoke"}
    for p in shipped:
        cfg = load_config(p)
        assert isinstance(cfg, TrainConfig) and cfg.stage in STAGES
        assert config_from_dict(json.loads(cfg.to_json())) == cfg  # round trip
    py = tmp_path / "cfg.py"
    py.write_text("CONFIG = {'stage': 'stage2_finetune', 'run': {'max_steps': 3}}\n")
    assert load_config(py).run.max_steps == 3


def test_cli_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import main

    assert main(["--config", str(REPO / "training/configs/stage2_finetune.json"), "--print-config",
                 "--set", "objective.prediction=v"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stage"] == "stage2_finetune" and shown["objective"]["prediction"] == "v"


# ------------------------------------------------------------------------------------------ model and stages
def test_trainable_groups_and_frozen_modules_get_no_gradient(assets: dict[str, Path], tmp_path: Path) -> None:
    tr = make_trainer(small_config(assets, tmp_path, objective={"reference_drop": 0.5}))
    mods = tr.mods
    trainable = {id(p) for p in tr.params}
    expected = {id(p) for m in (mods.denoiser.unet, mods.denoiser.sketch_encoder) for p in m.parameters()}
    assert trainable == expected  # v1: whole U-Net + sketch encoder (official trainer.py:168-172)
    assert {id(p) for g in tr.optimizer.param_groups for p in g["params"]} == expected
    tr.train_step([tr.fixed_batch(2)])
    for name in ("vae", "clip"):
        module = getattr(mods, name)
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters()), name
    for module in (mods.denoiser.unet, mods.denoiser.sketch_encoder):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    for stage in ("stage1_noisy", "stage2_finetune"):
        assert STAGES[stage].trainable == ("unet", "sketch_encoder")
    with pytest.raises(ValueError, match="frozen"):
        apply_trainable(replace(STAGES["stage1_noisy"], trainable=("unet", "vae")), mods.groups())


def test_init_from_sd21_layout(tmp_path: Path) -> None:
    """An SD2.1 LDM file (Linear proj_in/out, no sketch encoder) initialises the U-Net and VAE; the sketch encoder
    starts from zero output convs, so its hints are zero and the model equals the plain U-Net."""
    from safetensors.torch import save_file

    from colorize.models.unet import DualCondUNet
    from colorize.models.vae import AutoencoderKL
    from training.config import ModelConfig
    from training.model import build_modules

    torch.manual_seed(1)
    unet, vae = DualCondUNet(SMALL.unet), AutoencoderKL(SMALL.vae)
    for p in unet.parameters():
        p.data.normal_(0, 0.05)
    sd = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + k] = v[:, :, 0, 0] if (".proj_in." in k or ".proj_out." in k) and v.ndim == 4 else v
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    path = tmp_path / "sd21.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.warns(UserWarning, match="reference encoder is random"):
        mods = build_modules(ModelConfig(init=str(path), colorize_config=SMALL.to_dict()))
    for k, v in unet.state_dict().items():
        assert torch.equal(mods.denoiser.unet.state_dict()[k], v), k
    # (batch 2: the tiny U-Net's 1×1 bottom needs two values per GroupNorm group)
    x, t, ctx, sketch = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 256, 64), torch.rand(2, 3, 64, 64)

    assert all((h == 0).all() for h in mods.denoiser.sketch_encoder(sketch))
    assert torch.allclose(mods.denoiser(x, t, ctx, sketch), unet(x, t, ctx), atol=1e-6)


# ------------------------------------------------------------------------------------------ training runs
def test_loss_decreases_export_loads_and_colorizes(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colorize.pipeline import Colorizer
    from colorize.settings import GenerationSettings
    from training.logs import read_log

    cfg = small_config(assets, tmp_path / "run", run={"max_steps": 16, "batch_size": 2, "export": True,
                                                       "save_every": 8, "sample_every": 16, "sample_steps": 2,
                                                       "log_every": 4})
    tr = make_trainer(cfg)
    probe = tr.fixed_batch(4, key=-7)
    before = tr.eval_loss(probe)
    result = tr.train()
    after = tr.eval_loss(probe)
    assert result.step == 16 and len(result.losses) == 16
    assert after < 0.7 * before, (before, after)
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [4, 8, 12, 16] and all("loss" in r and "samples_per_s" in r for r in log)
    assert (tmp_path / "run" / "samples" / "step_00000016.png").is_file()
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["step_00000008.pt",
                                                                                     "step_00000016.pt"]
    # the export has the released layout and loads in colorize
    from safetensors import safe_open

    with safe_open(str(result.export), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        assert f.get_tensor(next(k for k in keys if k.startswith("first_stage_model."))).dtype == torch.float16
    assert {k.split(".")[0] for k in keys} == {"model", "control_encoder", "first_stage_model"}
    assert ColorizerConfig.from_dict(json.loads(meta["colorize_config"])).unet == SMALL.unet
    assert json.loads(meta["colorize_training"]) == {"stage": "stage1_noisy", "step": 16, "ema": False}
    model = Colorizer.from_files(result.export, assets["clip"], device="cpu", precision="fp32")
    trained = tr.mods.denoiser.state_dict()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, trained["unet." + k]), k
    sketch01, ref01 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    image = model.colorize(sketch01, ref01, GenerationSettings(steps=2, width=64, height=64, seed=1))
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    # ... and in the ComfyUI checkpoint loader node (outside ComfyUI it reads $COLORIZE_MODELS_DIR/colorizediffusion)
    import shutil

    from _helpers import require_node_api

    require_node_api()
    from nodes import NODE_CLASSES

    (tmp_path / "models" / "colorizediffusion").mkdir(parents=True)
    shutil.copy(result.export, tmp_path / "models" / "colorizediffusion" / "trained.safetensors")
    monkeypatch.setenv("COLORIZE_MODELS_DIR", str(tmp_path / "models"))
    node_model = NODE_CLASSES["ColorizeDiffusionCheckpointLoader"].execute("trained.safetensors", "fp32").result[0]
    assert node_model.config.version == "mult" and node_model.config.unet == SMALL.unet


def _params(tr) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {k: v.detach().clone() for k, v in tr.mods.denoiser.state_dict().items()}


def test_resume_continues_bitwise(assets: dict[str, Path], tmp_path: Path) -> None:
    run = {"max_steps": 4, "batch_size": 2, "ema_decay": 0.9, "export": False}
    full = make_trainer(small_config(assets, tmp_path / "full", run=run, optim={"warmup_steps": 3}))
    res_full = full.train()
    cut = make_trainer(small_config(assets, tmp_path / "cut", run={**run, "max_steps": 2}, optim={"warmup_steps": 3}))
    cut.train()
    resumed = make_trainer(small_config(assets, tmp_path / "cut", run=run, optim={"warmup_steps": 3}))
    assert resumed.step == 2
    res_resumed = resumed.train()
    assert res_resumed.losses == res_full.losses[2:]
    a, b = _params(full), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in full.ema.shadow)
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert full.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    state = torch.load(tmp_path / "cut" / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert state["data"] == {"step": 2, "epoch": 0, "offset": 4, "global_batch": 2}
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}


def test_export_command_from_training_state(assets: dict[str, Path], tmp_path: Path) -> None:
    """``python -m training.export RUN --out F`` writes the EMA weights (or the raw ones with --no-ema)."""
    from safetensors.torch import load_file

    from training.export import main as export_main

    tr = make_trainer(small_config(assets, tmp_path / "run", run={"max_steps": 2, "ema_decay": 0.5}))
    tr.train()
    export_main([str(tmp_path / "run"), "--out", str(tmp_path / "ema.safetensors")])
    export_main([str(tmp_path / "run" / "checkpoints" / "step_00000002.pt"), "--out", str(tmp_path / "raw.safetensors"),
                 "--no-ema"])
    ema, raw = load_file(str(tmp_path / "ema.safetensors")), load_file(str(tmp_path / "raw.safetensors"))
    params = dict(tr.mods.denoiser.named_parameters())
    for k, v in tr.ema.shadow.items():
        group, _, rest = k.partition(".")
        key = ("model.diffusion_model." if group == "unet" else "control_encoder.") + rest
        assert torch.equal(ema[key], v) and torch.equal(raw[key], params[k].detach())
    assert not torch.equal(ema["model.diffusion_model.out.2.weight"], raw["model.diffusion_model.out.2.weight"])
    vae = tr.mods.vae.state_dict()
    assert all(torch.equal(raw["first_stage_model." + k], v.half()) for k, v in vae.items())


def test_full_size_export_has_the_released_layout(layout_dir: Path) -> None:
    from colorize.config import FULL_MULT
    from colorize.families.v1.training import Denoiser
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.unet import DualCondUNet
    from colorize.models.vae import AutoencoderKL
    from colorize.sampling.noise_schedule import BUFFER_NAMES
    from training.export import released_layout

    with torch.device("meta"):
        den = Denoiser(DualCondUNet(FULL_MULT.unet, use_checkpoint=True), SketchEncoder(FULL_MULT.sketch))
        vae = AutoencoderKL(FULL_MULT.vae)
    out = released_layout(den.state_dict(), vae.state_dict())
    layout = json.loads((layout_dir / "keys_mult.json").read_text())
    expected = {k: v for k, v in layout.items() if not k.startswith("cond_stage_model.") and k not in BUFFER_NAMES}
    assert {k: list(v.shape) for k, v in out.items()} == expected
    assert {v.dtype for k, v in out.items() if k.startswith("first_stage_model.")} == {torch.float16}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_fp32_master_weights(assets: dict[str, Path], tmp_path: Path, precision: str) -> None:
    """Autocast on the CPU (bf16, or fp16 with a GradScaler whose state is checkpointed); fp32 weights."""
    tr = make_trainer(small_config(assets, tmp_path, run={"max_steps": 2, "precision": precision}))
    result = tr.train()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert {p.dtype for p in tr.mods.denoiser.parameters()} == {torch.float32}
    state = torch.load(result.checkpoint, weights_only=True)
    if precision == "fp16":
        assert tr.scaler.is_enabled() and state["scaler"]["scale"] == tr.scaler.get_scale() > 1
    else:
        assert not tr.scaler.is_enabled() and state["scaler"] == {}


def test_v_prediction_export_records_its_parameterization(assets: dict[str, Path], tmp_path: Path) -> None:
    from colorize.atomic import safetensors_metadata

    tr = make_trainer(small_config(assets, tmp_path, objective={"prediction": "v"},
                                   run={"max_steps": 1, "export": True}))
    path = tr.train().export
    meta = json.loads(safetensors_metadata(path)["colorize_config"])
    assert meta["parameterization"] == "v" and tr.mods.config.parameterization == "v"
