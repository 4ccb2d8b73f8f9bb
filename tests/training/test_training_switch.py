"""v1.5 training stage ``switch_fgbg`` (thesis §5.5; official DualMaskTrainer,
refnet/models/trainer/mask.py:25-164 at commit c9bd9fb) on CPU with tiny weights:
masks as batch fields, per-sample thresholds, what trains, the split forward, learning, export → library."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import make_trainer, masked_stage_config

from colorize.config import TINY_MULT
from training.batches import ItemSpec, TripletDataset, collate
from training.config import AugmentConfig, DataConfig, ObjectiveConfig, config_from_dict
from training.data import open_source
from training.objective import NoiseSpec
from training.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from colorize.tiny import write_tiny_weights

    base = tmp_path_factory.mktemp("switch")
    files = write_tiny_weights(base / "models", TINY_MULT, seed=0, versions=("mult", "switch"))
    return {
        "switch": files["switch-eps"],
        "mult": files["mult-eps-ft"],
        "clip": files["clip-vit-h-14"],
        "data": make_synthetic_dataset(base / "data", 8, (72, 88), "folders", seed=1, masks=True),
        "zip": make_synthetic_dataset(base / "zip", 6, (72, 88), "zip", seed=2, shard_size=3, masks=True),
        "nomask": make_synthetic_dataset(base / "nomask", 3, (64, 64), "folders", seed=3),
    }


def switch_config(assets: dict[str, Path], out: Path, init: str = "switch", **sections: Any) -> dict[str, Any]:
    return masked_stage_config("switch_fgbg", assets[init], assets["clip"], assets["data"], out, 2, **sections)


# ------------------------------------------------------------------------------------------ data
def test_masks_follow_the_geometry_of_colour_and_reference() -> None:
    """A colour image whose red channel *is* its mask: after flip/resize/crop/TPS the mask still equals it."""
    from training.augment import augment_triplet

    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 90, 70, generator=g) > 0.5).float()
    color = torch.cat([mask, torch.rand(2, 90, 70, generator=g)])
    cfg = AugmentConfig(buckets=((64, 64),), load_size=None, scale_range=(1.0, 1.4), flip_p=0.5,
                        reference_flip_p=0.5, reference_size=48, tps_p=1.0, color_jitter_p=0.0)
    for seed in range(4):
        out = augment_triplet(color, torch.rand(3, 90, 70), (64, 64), cfg, torch.Generator().manual_seed(seed), mask)
        assert out["mask"].shape == (1, 64, 64) and out["reference_mask"].shape == (1, 48, 48)
        assert torch.allclose(out["mask"], (out["color"][:1] + 1) / 2, atol=1e-5)
        assert torch.allclose(out["reference_mask"], (out["reference"][:1] + 1) / 2, atol=1e-5)
        plain = augment_triplet(color, torch.rand(3, 90, 70), (64, 64), cfg, torch.Generator().manual_seed(seed))
        assert "mask" not in plain and torch.allclose(plain["color"], out["color"], atol=1e-5)  # same draws


@pytest.mark.parametrize("layout", ["data", "zip"])
def test_dataset_loads_masks_and_draws_thresholds_per_sample(assets: dict[str, Path], layout: str) -> None:
    source = open_source(DataConfig(root=str(assets[layout])))
    obj = ObjectiveConfig()
    ds = TripletDataset(source, AugmentConfig(buckets=((64, 64),), load_size=80, reference_size=32), obj,
                        NoiseSpec(4, 8, 4, 4), seed=3, masks=True)
    batch = collate([ds[ItemSpec(i % len(ds), step, i, (64, 64))] for step in range(40) for i in range(4)])
    assert batch["mask"].shape == (160, 1, 64, 64) and batch["reference_mask"].shape == (160, 1, 32, 32)
    fg = batch["mask"].mean((1, 2, 3))
    assert 0.1 < float(fg.mean()) < 0.9 and (fg < 0.95).all() and (fg > 0.01).float().mean() > 0.9  # shapes + bg
    for key in ("th_s", "th_r"):
        th = batch[key]
        assert th.shape == (160,) and th.min() >= 0.05 and th.max() <= 0.95  # U[0.05, 0.95] (official mask.py:36-98)
        assert th.min() < 0.15 and th.max() > 0.85 and abs(float(th.mean()) - 0.5) < 0.08
        assert len(set(th[:4].tolist())) == 4  # per sample, not per batch
    assert not torch.equal(batch["th_s"], batch["th_r"])
    narrow = TripletDataset(source, AugmentConfig(buckets=((64, 64),), load_size=80, reference_size=32),
                            ObjectiveConfig(threshold_range=(0.3, 0.4)), NoiseSpec(4, 8, 4, 4), seed=3, masks=True)
    th = torch.stack([narrow[ItemSpec(0, s, 0, (64, 64))]["th_s"] for s in range(20)])
    assert th.min() >= 0.3 and th.max() <= 0.4
    nomask = open_source(DataConfig(root=str(assets["nomask"])))
    with pytest.raises(ValueError, match="training.prepare --masks"):
        TripletDataset(nomask, AugmentConfig(), obj, NoiseSpec(4, 8, 4, 4), seed=0, masks=True)
    with pytest.raises(ValueError, match="threshold_range"):
        config_from_dict({"stage": "switch_fgbg", "objective": {"threshold_range": [0.5, 0.2]}})


# ------------------------------------------------------------------------------------------ model
def test_trainable_set_and_frozen_modules(assets: dict[str, Path], tmp_path: Path) -> None:
    from colorize.models.lora import SplitLoraLinear

    tr = make_trainer(switch_config(assets, tmp_path))
    den = tr.mods.denoiser
    lora = [p for m in den.unet.modules() if isinstance(m, SplitLoraLinear)
            for sub in (m.lora_down_fg, m.lora_up_fg, m.lora_down_bg, m.lora_up_bg) for p in sub.parameters()]
    expected = {id(p) for p in [*lora, *den.thresh_embedder.parameters(), *den.transformer.parameters()]}
    n_attn2 = sum(1 for name, _ in den.unet.named_modules() if name.endswith(".attn2"))
    assert n_attn2 > 0 and len(lora) == n_attn2 * 3 * 4  # to_q/k/v × (down, up) × (fg, bg), every block (v1.5)
    assert {id(p) for p in tr.params} == expected and len(tr.params) == len(expected)
    assert {id(p) for g in tr.optimizer.param_groups for p in g["params"]} == expected
    base = [p for n, p in den.unet.named_parameters() if ".lora_" not in n]
    assert base and all(not p.requires_grad for p in base)
    tr.train_step([tr.fixed_batch(2)])
    frozen = {"unet base": base, "sketch encoder": list(den.sketch_encoder.parameters()),
              "vae": list(tr.mods.vae.parameters()), "clip": list(tr.mods.clip.parameters())}
    for name, params in frozen.items():
        assert all(p.grad is None and not p.requires_grad for p in params), name
    for name, module in (("thresh_embedder", den.thresh_embedder), ("transformer", den.transformer)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert sum(float(p.grad.abs().sum()) for p in lora if p.grad is not None) > 0


def test_split_forward_uses_per_sample_thresholds(assets: dict[str, Path], tmp_path: Path) -> None:
    """A batch with thresholds (th_s, th_r) per sample equals each sample run alone with scalar thresholds
    through the library's split-attention processor and v1.5 conditioning helpers; a dropped reference zeroes the whole context."""
    from colorize.families.v15.conditioning import recover_background
    from colorize.models.attention import AttentionPatches
    from colorize.models.split_attention import SplitAttention, SplitOptions

    tr = make_trainer(switch_config(assets, tmp_path))
    den = tr.mods.denoiser.eval()
    g = torch.Generator().manual_seed(4)
    b, n, c = 2, 256, TINY_MULT.unet.context_dim
    x, t = torch.randn(b, 4, 16, 16, generator=g), torch.tensor([30, 700])
    fg, bgref = torch.randn(b, n, c, generator=g), torch.randn(b, n, c, generator=g)
    sketch, mask = torch.rand(b, 3, 128, 128, generator=g), torch.rand(b, 1, 16, 16, generator=g)
    th_s, th_r = torch.tensor([0.2, 0.7]), torch.tensor([0.9, 0.1])
    with torch.no_grad():
        out = den(x, t, fg, sketch, bg_reference_tokens=bgref, th_r=th_r, th_s=th_s, mask=mask)
        for i in range(b):
            s = slice(i, i + 1)
            bg = recover_background(den.transformer, bgref[s], den.thresh_embedder([float(th_r[i])]))
            split = SplitOptions(mask=mask[s], threshold=float(th_s[i]), use_fg_lora=True, use_bg_lora=True)
            ref = den.unet(x[s], t[s], torch.cat([fg[s], bg], 1), den.sketch_encoder(sketch[s]),
                           AttentionPatches(cross_attention=SplitAttention(split)))
            assert torch.allclose(out[s], ref, atol=1e-5), i
        swapped = den(x, t, fg, sketch, bg_reference_tokens=bgref, th_r=th_r, th_s=th_s.flip(0), mask=mask)
        assert not torch.allclose(out, swapped, atol=1e-4)
        dropped = den(x, t, fg, sketch, bg_reference_tokens=bgref, th_r=th_r, th_s=th_s, mask=mask,
                      ref_keep=torch.tensor([0.0, 1.0]))
        zero_split = SplitOptions(mask=mask[:1], threshold=0.2, use_fg_lora=True, use_bg_lora=True)
        zero = den.unet(x[:1], t[:1], torch.zeros(1, 2 * n, c), den.sketch_encoder(sketch[:1]),
                        AttentionPatches(cross_attention=SplitAttention(zero_split)))
    assert torch.allclose(dropped[:1], zero, atol=1e-5) and torch.allclose(dropped[1:], out[1:], atol=1e-5)


def test_start_from_v1_weights(assets: dict[str, Path], tmp_path: Path) -> None:
    """From a v1 file: base weights are v1's, LoRA up = 0, so an all-foreground split forward equals v1."""
    from colorize.loader import load_checkpoint_modules

    tr = make_trainer(switch_config(assets, tmp_path, init="mult"))
    den = tr.mods.denoiser.eval()
    v1 = load_checkpoint_modules(assets["mult"])
    sd = den.unet.state_dict()
    for k, v in v1.unet.state_dict().items():
        assert torch.equal(sd[k], v.float()), k
    assert all(float(v.abs().max()) == 0 for k, v in sd.items() if ".lora_up_" in k)
    g = torch.Generator().manual_seed(5)
    x, t, fg = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([5, 500]), torch.randn(2, 256, 64, generator=g)
    sketch = torch.rand(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        split = den(x, t, fg, sketch, bg_reference_tokens=torch.randn(2, 256, 64, generator=g),
                    th_r=torch.tensor([0.5, 0.5]), th_s=torch.tensor([0.3, 0.6]), mask=torch.ones(2, 1, 16, 16))
        plain = v1.unet.float()(x, t, fg, v1.sketch_encoder.float()(sketch))
    assert torch.allclose(split, plain, atol=1e-5)
    assert tr.mods.config.version == "switch" and "transformer_dim_head" in tr.mods.config.extras


# ------------------------------------------------------------------------------------------ runs
def test_training_lowers_the_loss_and_the_export_colorizes(assets: dict[str, Path], tmp_path: Path) -> None:
    from colorize.pipeline import Colorizer
    from colorize.settings import EnhanceSettings, GenerationSettings

    tr = make_trainer(switch_config(assets, tmp_path / "fit", objective={"reference_drop": 0.0}))
    probe = tr.fixed_batch(4, key=-7)
    before = tr.eval_loss(probe)
    for _ in range(12):
        tr.train_step([probe])
    after = tr.eval_loss(probe)
    assert after < 0.9 * before, (before, after)

    run = make_trainer(switch_config(assets, tmp_path / "run", run={"max_steps": 3, "export": True,
                                                                     "sample_every": 3, "sample_steps": 2}))
    frozen = {k: v.clone() for k, v in run.mods.denoiser.unet.state_dict().items() if ".lora_" not in k}
    result = run.train()
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert (tmp_path / "run" / "samples" / "step_00000003.png").is_file()  # previews use the split path
    assert all(torch.equal(run.mods.denoiser.unet.state_dict()[k], v) for k, v in frozen.items())
    model = Colorizer.from_files(result.export, assets["clip"], device="cpu", precision="fp32")
    assert model.config.version == "switch" and set(model.extras) == {"thresh_embedder", "transformer"}
    trained = run.mods.denoiser.state_dict()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, trained["unet." + k]), k
    for name in ("thresh_embedder", "transformer"):
        for k, v in model.extras[name].state_dict().items():
            assert torch.equal(v, trained[f"{name}.{k}"]), (name, k)
    g = torch.Generator().manual_seed(6)
    sketch01, ref01 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    smask, rmask = (torch.rand(1, 64, 64, generator=g) > 0.5).float(), (torch.rand(1, 64, 64, generator=g) > 0.5).float()
    image = model.colorize(sketch01, ref01, GenerationSettings(steps=2, width=64, height=64, seed=1),
                           enhance=EnhanceSettings(background_enhance=True), sketch_mask=smask, reference_mask=rmask)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_resume_continues_bitwise(assets: dict[str, Path], tmp_path: Path) -> None:
    run = {"max_steps": 3, "resume": "auto"}
    full = make_trainer(switch_config(assets, tmp_path / "full", run=run)).train()
    make_trainer(switch_config(assets, tmp_path / "cut", run={**run, "max_steps": 1})).train()
    resumed = make_trainer(switch_config(assets, tmp_path / "cut", run=run))
    assert resumed.step == 1
    assert resumed.train().losses == full.losses[1:]


def test_full_size_export_has_the_released_layout(layout_dir: Path) -> None:
    """The v1.5 training modules at full size export exactly the released ``switch`` keys and shapes."""
    import json

    from colorize.config import FULL_MULT
    from colorize.families.v15 import SWITCH_LORA
    from colorize.families.v15.recovery import ClusterTransformer, ScalarEmbedder
    from colorize.families.v15.training import SwitchDenoiser, fresh_recovery_configs
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.unet import DualCondUNet
    from colorize.models.vae import AutoencoderKL
    from colorize.sampling.noise_schedule import BUFFER_NAMES
    from training.export import released_layout

    embedder_cfg, recovery_cfg = fresh_recovery_configs(FULL_MULT)
    assert recovery_cfg.head_width == 64
    with torch.device("meta"):
        den = SwitchDenoiser(DualCondUNet(FULL_MULT.unet, SWITCH_LORA), SketchEncoder(FULL_MULT.sketch),
                             ScalarEmbedder(embedder_cfg), ClusterTransformer(recovery_cfg))
        vae = AutoencoderKL(FULL_MULT.vae)
    out = released_layout(den.state_dict(), vae.state_dict())
    layout = json.loads((layout_dir / "keys_switch.json").read_text())
    expected = {k: v for k, v in layout.items() if not k.startswith("cond_stage_model.") and k not in BUFFER_NAMES}
    assert {k: list(v.shape) for k, v in out.items()} == expected
