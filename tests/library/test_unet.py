"""DualCondUNet: official key layout, fixture parity, and the forward-argument semantics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _helpers import randomize as _randomize
from _helpers import state_shapes as _shapes

from colorize.config import FULL_MULT, TINY_MULT, UNetConfig
from colorize.models.attention import AttentionPatches, SpatialTransformer
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.unet import (
    ATTENTION_BLOCK_ORDER,
    BLOCK_SCALE_FACTORS,
    DualCondUNet,
    timestep_embedding,
)
from colorize.parity.core import load_fixture, run_fixture
from colorize.settings import (
    LEVEL_GROUPS,
    block_reference_scales,
    level_reference_scales,
)

UNET_PREFIX = "model.diffusion_model."
SKETCH_PREFIX = "control_encoder."


def _layout(layout_dir: Path, prefix: str) -> dict[str, list[int]]:
    keys = json.loads((layout_dir / "keys_mult.json").read_text())
    return {k: list(v) for k, v in keys.items() if k.startswith(prefix)}



def test_full_size_keys_match_official_layout(layout_dir: Path) -> None:
    with torch.device("meta"):
        unet = DualCondUNet(FULL_MULT.unet)
        sketch = SketchEncoder(FULL_MULT.sketch)
    assert _shapes(unet, UNET_PREFIX) == _layout(layout_dir, UNET_PREFIX)
    assert _shapes(sketch, SKETCH_PREFIX) == _layout(layout_dir, SKETCH_PREFIX)
    assert unet.num_attention_blocks == len(ATTENTION_BLOCK_ORDER)
    assert unet.hint_indices == [0, 3, 6, 9, 11]


def test_unet_mult_fixture_parity(fixture_dir: Path) -> None:
    fx = load_fixture(fixture_dir / "unet_mult.json")
    res = run_fixture(fx)
    assert res.passed, (res.error, res.per_output)
    # The app's level dictionary on a fresh model gives exactly the stored effective per-block vector.
    api = fx.scalars["refscale_levels_api"]
    assert level_reference_scales(1.0, api["scales"]) == pytest.approx(
        fx.scalars["refscale_levels_effective_per_block"], abs=0
    )
    assert list(ATTENTION_BLOCK_ORDER) == fx.scalars["attention_block_order"]
    assert {k: list(v) for k, v in LEVEL_GROUPS.items()} == fx.scalars["attention_level_groups"]
    assert list(BLOCK_SCALE_FACTORS) == fx.scalars["attention_block_scale_factor"]


# ------------------------------------------------------------------ tiny model with random weights


@pytest.fixture(scope="module")
def tiny() -> tuple[DualCondUNet, SketchEncoder]:
    torch.manual_seed(0)
    unet, sketch = DualCondUNet(TINY_MULT.unet).eval(), SketchEncoder(TINY_MULT.sketch).eval()
    _randomize(unet, 1)
    _randomize(sketch, 2)
    return unet, sketch


def _inputs(b: int = 2, h: int = 8, w: int = 16, n: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 4, h, w, generator=g)
    t = torch.tensor([999.0, 421.5])[:b]
    ctx = torch.randn(b, n, TINY_MULT.unet.context_dim, generator=g)
    sketch = torch.rand(b, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    return x, t, ctx, sketch


@torch.no_grad()
def test_reference_scales_none_equals_all_ones_and_scales_act(tiny) -> None:
    unet, sketch = tiny
    x, t, ctx, sk = _inputs()
    hints = sketch(sk)
    base = unet(x, t, ctx, hints)
    ones = unet(x, t, ctx, hints, attention=AttentionPatches(reference_scales=[1.0] * 16))
    torch.testing.assert_close(ones, base, rtol=0, atol=0)
    ones_tensor = unet(x, t, ctx, hints, attention=AttentionPatches(reference_scales=torch.ones(16)))
    torch.testing.assert_close(ones_tensor, base, rtol=1e-6, atol=1e-6)
    for block in (0, 6, 15):  # every level of the U-Net reacts to its own scale
        scales = [1.0] * 16
        scales[block] = 0.3
        assert (unet(x, t, ctx, hints, attention=AttentionPatches(reference_scales=scales)) - base).abs().max() > 1e-4
    # No state is kept between calls.
    torch.testing.assert_close(unet(x, t, ctx, hints), base, rtol=0, atol=0)
    with pytest.raises(ValueError):
        unet(x, t, ctx, hints, attention=AttentionPatches(reference_scales=[1.0] * 15))


@torch.no_grad()
def test_reference_scale_zero_equals_empty_reference(tiny) -> None:
    """Scale 0 removes softmax·v, which is what a zero context (and context=None) gives."""
    unet, _ = tiny
    x, t, ctx, _ = _inputs()
    zero_scaled = unet(x, t, ctx, attention=AttentionPatches(reference_scales=[0.0] * 16))
    torch.testing.assert_close(unet(x, t, torch.zeros_like(ctx)), zero_scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unet(x, t, None), zero_scaled, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_per_row_scales_match_separate_calls(tiny) -> None:
    unet, _ = tiny
    x, t, ctx, _ = _inputs()
    rows = torch.stack([torch.full((16,), 0.5), torch.linspace(0.2, 1.8, 16)], dim=1)  # (16, b)
    both = unet(x, t, ctx, attention=AttentionPatches(reference_scales=rows))
    for i in range(2):
        scales = AttentionPatches(reference_scales=rows[:, i].tolist())
        one = unet(x[i : i + 1], t[i : i + 1], ctx[i : i + 1], attention=scales)
        torch.testing.assert_close(both[i : i + 1], one, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_zero_hints_equal_no_hints_and_hints_act(tiny) -> None:
    unet, sketch = tiny
    x, t, ctx, sk = _inputs()
    hints = sketch(sk)
    base = unet(x, t, ctx)
    torch.testing.assert_close(unet(x, t, ctx, [torch.zeros_like(h) for h in hints]), base, rtol=0, atol=0)
    torch.testing.assert_close(unet(x, t, ctx, [None] * 5), base, rtol=0, atol=0)
    assert (unet(x, t, ctx, hints) - base).abs().max() > 1e-3
    with pytest.raises(ValueError):
        unet(x, t, ctx, hints[:4])


@torch.no_grad()
def test_hints_are_added_after_blocks_0_3_6_9_11(tiny) -> None:
    """Adding a hint equals adding the same tensor to that input block's output (skip included)."""
    unet, sketch = tiny
    x, t, ctx, sk = _inputs()
    hints = sketch(sk)
    for slot, block_idx in enumerate(unet.hint_indices):
        only = [None] * 5
        only[slot] = hints[slot]
        handle = unet.input_blocks[block_idx].register_forward_hook(lambda m, a, out, h=hints[slot]: out + h)
        try:
            hooked = unet(x, t, ctx)
        finally:
            handle.remove()
        torch.testing.assert_close(unet(x, t, ctx, only), hooked, rtol=0, atol=0)


def test_attention_order_and_scale_factors_follow_the_topology(tiny) -> None:
    unet, _ = tiny
    names = {m: n for n, m in unet.named_modules() if isinstance(m, SpatialTransformer)}
    ordered = unet.attention_blocks()
    assert [names[m] for m in ordered] == list(ATTENTION_BLOCK_ORDER)
    x, t, ctx, _ = _inputs(h=16, w=24)
    seen: dict[int, float] = {}
    record = lambda m, args, out: seen.__setitem__(m.attn_index, args[0].shape[-1] / 24)  # noqa: E731
    hooks = [m.register_forward_hook(record) for m in ordered]
    with torch.no_grad():
        unet(x, t, ctx)
    for h in hooks:
        h.remove()
    assert [seen[i] for i in range(16)] == list(BLOCK_SCALE_FACTORS)


def test_level_reference_scales_rules() -> None:
    assert level_reference_scales() == [1.0] * 16
    s = level_reference_scales(0.5)
    untouched = {6, 13, 14, 15}
    assert all(s[i] == (1.0 if i in untouched else 0.5) for i in range(16))
    s = level_reference_scales(2.0, {"encoder": 0.1, "low": 0.3})
    # encoder first, then middle (default 1) overwrites 2,3; low overwrites 4,5.
    assert s[:6] == [0.2, 0.2, 2.0, 2.0, 0.6, 0.6]
    assert s[6] == 1.0 and s[7:10] == [0.6] * 3 and s[10:13] == [2.0] * 3 and s[13:] == [1.0] * 3
    assert level_reference_scales(1.0, {"high": 0.5, "bottom": 0.25})[13:] == [0.5] * 3
    with pytest.raises(ValueError):
        level_reference_scales(1.0, {"colour": 1.0})
    assert block_reference_scales([float(i) for i in range(16)], 0.5)[15] == 7.5


def test_timestep_embedding_cos_first() -> None:
    t = torch.tensor([0.0, 3.5, 999.0])
    emb = timestep_embedding(t, 10)
    k = torch.arange(5, dtype=torch.float64)
    args = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / 5)[None]
    torch.testing.assert_close(emb.double(), torch.cat([args.cos(), args.sin()], 1), rtol=0, atol=1e-4)
    assert timestep_embedding(t, 7).shape == (3, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


@torch.no_grad()
def test_odd_latent_sizes_and_scalar_timestep(tiny) -> None:
    unet, _ = tiny
    x = torch.randn(1, 4, 9, 13)
    ctx = torch.randn(1, 3, TINY_MULT.unet.context_dim)
    assert unet(x, torch.tensor(500.0), ctx).shape == x.shape


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights(tiny, dtype: torch.dtype) -> None:
    unet, sketch = tiny
    x, t, ctx, sk = _inputs()
    ref = unet(x, t, ctx, sketch(sk), attention=AttentionPatches(reference_scales=[0.7] * 16))
    half = DualCondUNet(TINY_MULT.unet, dtype=dtype).eval()
    half.load_state_dict(unet.state_dict())
    half_sketch = SketchEncoder(TINY_MULT.sketch, dtype=dtype).eval()
    half_sketch.load_state_dict(sketch.state_dict())
    scales = AttentionPatches(reference_scales=[0.7] * 16)
    out = half(x.to(dtype), t, ctx.to(dtype), half_sketch(sk.to(dtype)), attention=scales)
    assert out.dtype == dtype
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.1


def test_gradient_checkpointing_gives_same_gradients() -> None:
    cfg = UNetConfig(
        model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_head_channels=16, context_dim=8
    )
    plain = DualCondUNet(cfg)
    _randomize(plain, 4)
    ckpt = DualCondUNet(cfg, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, ctx, t = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8), torch.tensor([10.0])
    grads = []
    for m in (plain, ckpt):
        m.train().zero_grad()
        m(x, t, ctx).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
