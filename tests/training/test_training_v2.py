"""v2 training stages ``v2_background`` and ``v2_style`` (thesis §5.6.1, Eq. 5.5) on CPU with tiny v2 weights:
what trains, the per-sample background branch, learning, export → library v2 path."""
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

    base = tmp_path_factory.mktemp("v2")
    files = write_tiny_weights(base / "models", TINY_MULT, seed=0, versions=("v2",))
    return {"v2": files["v2-full"], "clip": files["clip-vit-h-14"],
            "data": make_synthetic_dataset(base / "data", 8, (72, 88), "folders", seed=1, masks=True)}


def v2_config(assets: dict[str, Path], out: Path, stage: str, **sections: Any) -> dict[str, Any]:
    return masked_stage_config(stage, assets["v2"], assets["clip"], assets["data"], out, 4, **sections)


def test_stage_defaults() -> None:
    for stage in ("v2_background", "v2_style"):
        cfg = config_from_dict({"stage": stage})
        assert cfg.objective.reference_drop == 0.5 and cfg.objective.prediction == "v"  # thesis §5.6.1, released v
    assert config_from_dict({"stage": "v2_style"}).objective.background_p == 0.5


@pytest.mark.parametrize("stage,trained,frozen_encoder", [
    ("v2_background", ("bg_encoder", "unet.warp", "unet.lora"), "style_encoder"),
    ("v2_style", ("style_encoder", "unet.style"), "bg_encoder"),
])
def test_trainable_set_and_frozen_modules(assets: dict[str, Path], tmp_path: Path, stage: str,
                                          trained: tuple[str, ...], frozen_encoder: str) -> None:
    tr = make_trainer(v2_config(assets, tmp_path, stage))
    groups = tr.mods.denoiser.groups()
    expected = {id(p) for g in trained for p in groups[g].parameters()}
    assert expected and {id(p) for p in tr.params} == expected and len(tr.params) == len(expected)
    assert {id(p) for g in tr.optimizer.param_groups for p in g["params"]} == expected
    batch = tr.fixed_batch(4)
    if stage == "v2_style":
        batch["bg_active"] = torch.tensor([1.0, 0.0, 1.0, 0.0])  # the frozen background branch is used
    tr.train_step([batch])
    den = tr.mods.denoiser
    trainable_unet = {id(p) for g in ("unet.lora", "unet.warp", "unet.style") for p in groups[g].parameters()
                      if id(p) in expected}
    frozen = {"unet base": [p for p in den.unet.parameters() if id(p) not in trainable_unet],
              "sketch encoder": list(den.sketch_encoder.parameters()),
              frozen_encoder: list(getattr(den, frozen_encoder).parameters()),
              "vae": list(tr.mods.vae.parameters()), "clip": list(tr.mods.clip.parameters())}
    for name, params in frozen.items():
        assert params and all(p.grad is None and not p.requires_grad for p in params), name
    for g in trained:
        grads = [p.grad for p in groups[g].parameters()]
        assert all(x is not None for x in grads) and sum(float(x.abs().sum()) for x in grads) > 0, g


def test_background_branch_is_drawn_per_sample(assets: dict[str, Path]) -> None:
    source = open_source(DataConfig(root=str(assets["data"])))
    ds = TripletDataset(source, AugmentConfig(buckets=((64, 64),), load_size=80, reference_size=32),
                        ObjectiveConfig(background_p=0.5), NoiseSpec(4, 8, 4, 4), seed=3, masks=True)
    active = collate([ds[ItemSpec(i % len(ds), s, i, (64, 64))] for s in range(50) for i in range(4)])["bg_active"]
    assert set(active.tolist()) == {0.0, 1.0} and abs(float(active.mean()) - 0.5) < 0.1


def test_mixed_rows_equal_separate_calls(assets: dict[str, Path], tmp_path: Path) -> None:
    """One call with rows with/without the background branch equals each row run alone."""
    tr = make_trainer(v2_config(assets, tmp_path, "v2_style"))
    den = tr.mods.denoiser.eval()
    g = torch.Generator().manual_seed(2)
    b, c = 4, TINY_MULT.unet.context_dim
    kw = {"y": torch.randn(b, den.bg_encoder.label_emb[0][0].in_features, generator=g),
          "bg_latent": torch.randn(b, 4, 8, 8, generator=g), "bg_tokens": torch.randn(b, 256, c, generator=g),
          "th_s": torch.tensor([0.2, 0.4, 0.6, 0.8]), "mask": torch.rand(b, 1, 8, 8, generator=g),
          "style_latent": torch.randn(b, 4, 8, 8, generator=g), "ref_keep": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    x, t = torch.randn(b, 4, 8, 8, generator=g), torch.tensor([10, 200, 500, 900])
    ctx, sketch = torch.randn(b, 256, c, generator=g), torch.rand(b, 3, 64, 64, generator=g)
    active = torch.tensor([True, False, False, True])
    with torch.no_grad():
        mixed = den(x, t, ctx, sketch, bg_active=active, **kw)
        on = den(x, t, ctx, sketch, **kw)
        off = den(x, t, ctx, sketch, **{k: v for k, v in kw.items() if k not in ("bg_latent",)})
    assert torch.allclose(mixed[active], on[active], atol=1e-5)
    assert torch.allclose(mixed[~active], off[~active], atol=1e-5)
    assert not torch.allclose(on, off, atol=1e-4)


@pytest.mark.parametrize("stage", ["v2_background", "v2_style"])
def test_training_lowers_the_loss_and_the_export_colorizes(assets: dict[str, Path], tmp_path: Path,
                                                          stage: str) -> None:
    from colorize.pipeline import Colorizer
    from colorize.settings import EnhanceSettings, GenerationSettings

    tr = make_trainer(v2_config(assets, tmp_path / "fit", stage, objective={"reference_drop": 0.0}))
    probe = tr.fixed_batch(4, key=-7)
    before = tr.eval_loss(probe)
    for _ in range(10):
        tr.train_step([probe])
    assert tr.eval_loss(probe) < 0.85 * before

    run = make_trainer(v2_config(assets, tmp_path / "run", stage, run={"max_steps": 2, "export": True}))
    trainable = {id(p) for p in run.params}
    frozen = {n: p.detach().clone() for n, p in run.mods.denoiser.named_parameters() if id(p) not in trainable}
    result = run.train()
    now = dict(run.mods.denoiser.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    model = Colorizer.from_files(result.export, assets["clip"], device="cpu", precision="fp32")
    assert model.config.version == "v2" and model.config.parameterization == "v"
    trained = run.mods.denoiser.state_dict()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, trained["unet." + k]), k
    for name in ("bg_encoder", "style_encoder"):
        for k, v in model.extras[name].state_dict().items():
            assert torch.equal(v, trained[f"{name}.{k}"]), (name, k)
    g = torch.Generator().manual_seed(6)
    sketch01, ref01 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    smask, rmask = (torch.rand(1, 64, 64, generator=g) > 0.5).float(), (torch.rand(1, 64, 64, generator=g) > 0.5).float()
    enhance = EnhanceSettings(background_enhance=True, style_enhance=stage == "v2_style")
    image = model.colorize(sketch01, ref01, GenerationSettings(steps=2, width=64, height=64, seed=1),
                           enhance=enhance, sketch_mask=smask, reference_mask=rmask)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_full_size_export_has_the_released_layout(layout_dir: Path) -> None:
    """The v2 training modules at full size export exactly the released ``v2`` keys and shapes."""
    import json

    from colorize.config import FULL_MULT
    from colorize.families.v2.config import V2_LORA
    from colorize.families.v2.encoders import background_encoder, style_encoder
    from colorize.families.v2.training import V2Denoiser
    from colorize.families.v2.unet import V2UNet
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.vae import AutoencoderKL
    from colorize.sampling.noise_schedule import BUFFER_NAMES
    from training.export import released_layout

    with torch.device("meta"):
        den = V2Denoiser(V2UNet(FULL_MULT.unet, V2_LORA), SketchEncoder(FULL_MULT.sketch),
                         background_encoder(FULL_MULT.unet), style_encoder(FULL_MULT.unet))
        vae = AutoencoderKL(FULL_MULT.vae)
    out = released_layout(den.state_dict(), vae.state_dict())
    layout = json.loads((layout_dir / "keys_v2.json").read_text())
    expected = {k: v for k, v in layout.items() if not k.startswith("cond_stage_model.") and k not in BUFFER_NAMES}
    assert {k: list(v.shape) for k, v in out.items()} == expected
