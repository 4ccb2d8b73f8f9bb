"""ColorizeDiffusion XL sketch encoder (``colorize.families.xl.sketch_encoder``): the official layout and size,
config inference, the scale-causal mask, the 2-D RoPE tables, odd sizes and the golden fixture."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import kind_result, skip_or_fail
from _helpers import randomize as _randomize
from _helpers import state_shapes as _shapes

from colorize.errors import CheckpointError
from colorize.families.xl.sketch_encoder import (
    FULL_XL_SKETCH_ENCODER,
    PREFIX,
    MultiScaleAttentionEncoder,
    MultiScaleCausalAttention,
    MultiScaleEncoderConfig,
    apply_rope,
    config_from_official,
    infer_sketch_encoder_config,
    num_parameters,
    rope_angles,
    scale_causal_mask,
    scale_ids,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = MultiScaleEncoderConfig(model_channels=8, ch_mults=(1, 2, 3), attention_width=32, dim_head=8)


def _tiny_encoder(cfg: MultiScaleEncoderConfig = TINY, seed: int = 0) -> MultiScaleAttentionEncoder:
    enc = MultiScaleAttentionEncoder(cfg).eval()
    _randomize(enc, seed)
    return enc


# ------------------------------------------------------------------------------------------ layout and size


def test_full_size_layout_and_parameter_count(layout_dir: Path) -> None:
    path = layout_dir / "keys_xl_sdxl.json"
    if not path.is_file():
        skip_or_fail(f"{path} not found (the XL key layout)")
    official = {k: list(v) for k, v in json.loads(path.read_text()).items() if k.startswith(PREFIX)}
    with torch.device("meta"):
        enc = MultiScaleAttentionEncoder()
    assert _shapes(enc, PREFIX) == official
    assert sum(p.numel() for p in enc.parameters()) == 25_984_720
    assert num_parameters(FULL_XL_SKETCH_ENCODER) == 25_984_720
    assert infer_sketch_encoder_config(official) == FULL_XL_SKETCH_ENCODER


def test_full_size_config_numbers() -> None:
    cfg = FULL_XL_SKETCH_ENCODER
    assert (cfg.model_channels, cfg.ch_mults, cfg.attention_width, cfg.dim_head, cfg.heads) == (
        320, (1, 2, 4), 1280, 128, 10)
    assert cfg.hint_channels == (320, 320, 640, 1280)
    assert cfg.hint_strides == (8, 16, 32, 32)


def test_config_defaults_and_validation() -> None:
    # the fixture's official params: the attention width follows the last stage (16 * 4)
    cfg = config_from_official({"in_ch": 3, "model_channels": 16, "ch_mults": [1, 2, 4], "dim_head": 16})
    assert (cfg.attention_width, cfg.heads, cfg.ch_mults) == (64, 4, (1, 2, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        MultiScaleEncoderConfig(model_channels=16, ch_mults=(1, 2, 4), dim_head=6)
    with pytest.raises(ValueError, match="not a multiple"):
        MultiScaleEncoderConfig(model_channels=16, ch_mults=(1, 2, 4), attention_width=60, dim_head=8)
    with pytest.raises(ValueError):
        MultiScaleEncoderConfig(ch_mults=())


# ------------------------------------------------------------------------------------------ config inference


@pytest.mark.parametrize("as_shapes", [False, True])
def test_config_inference_round_trip(as_shapes: bool) -> None:
    sd = MultiScaleAttentionEncoder(TINY).state_dict()
    shapes = {PREFIX + k: (list(v.shape) if as_shapes else v) for k, v in sd.items()}
    assert infer_sketch_encoder_config(shapes, dim_head=TINY.dim_head) == TINY
    unprefixed = {k: v.shape for k, v in sd.items()}
    assert infer_sketch_encoder_config(unprefixed, dim_head=8) == TINY
    # the head width is not in the shapes: another valid one gives another config with the same layout
    other = infer_sketch_encoder_config(unprefixed, dim_head=16)
    assert other.heads == 2 and _shapes(MultiScaleAttentionEncoder(other), "") == _shapes(
        MultiScaleAttentionEncoder(TINY), "")


def test_config_inference_errors() -> None:
    sd = {k: v.shape for k, v in MultiScaleAttentionEncoder(TINY).state_dict().items()}
    with pytest.raises(CheckpointError, match="model.14.weight"):
        infer_sketch_encoder_config({k: v for k, v in sd.items() if k != "model.14.weight"})
    with pytest.raises(CheckpointError, match="downsample_layers"):
        infer_sketch_encoder_config({k: v for k, v in sd.items() if not k.startswith("downsample_layers.1.")})
    with pytest.raises(CheckpointError, match="dim_head"):
        infer_sketch_encoder_config(sd, dim_head=12)  # width 32 is no multiple of 12


# ------------------------------------------------------------------------------------------ scale-causal mask


def test_scale_causal_mask_pattern() -> None:
    lengths = [1, 4, 4, 16, 64]  # global, last stage, stage 1, stage 0, stem (coarse first)
    mask = scale_causal_mask(lengths)
    ids = scale_ids(lengths)
    assert mask.dtype == torch.bool and mask.shape == (89, 89)
    assert ids.tolist() == sum(([s] * n for s, n in enumerate(lengths)), [])
    for i in range(89):
        for j in range(89):
            # coarser or same scale: visible; finer: never
            assert bool(mask[i, j]) == (ids[j] <= ids[i])
    assert mask[0].sum() == 1  # the global token sees only itself
    assert mask[-1].all()  # the stem sees everything
    assert torch.equal(mask[1:5, :5], torch.ones(4, 5, dtype=torch.bool))
    assert not mask[1:5, 5:].any()
    small = scale_causal_mask([1, 2])
    assert small.tolist() == [[True, False, False], [True, True, True], [True, True, True]]


def _masked_reference(attn: MultiScaleCausalAttention, x: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
    """The same layer written as one masked attention (independent of the per-scale prefix split)."""
    b, n, c = x.shape
    h, d = attn.heads, attn.dim_head

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n, h, d).permute(0, 2, 1, 3)

    ang = rope_angles(grids, d, attn.rope_base)
    q = apply_rope(split(attn.q_norm(attn.to_q(x))), ang)
    k = apply_rope(split(attn.k_norm(attn.to_k(x))), ang)
    v = split(attn.to_v(x))
    mask = scale_causal_mask([gh * gw for gh, gw in grids])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.to_out(out.permute(0, 2, 1, 3).reshape(b, n, c))


def test_attention_equals_masked_attention_and_is_causal_by_scale() -> None:
    torch.manual_seed(0)
    attn = MultiScaleCausalAttention(32, 8).eval()
    _randomize(attn, 1)
    grids = [(1, 1), (2, 3), (2, 3), (3, 5), (5, 9)]
    n = sum(h * w for h, w in grids)
    x = torch.randn(2, n, 32)
    with torch.no_grad():
        y = attn(x, grids)
        assert torch.allclose(y, _masked_reference(attn, x, grids), atol=1e-6, rtol=0)
        # changing the finest scale (the stem tokens, last) leaves every coarser token's output unchanged
        start = n - 45
        x2 = x.clone()
        x2[:, start:] += torch.randn(2, 45, 32)
        y2 = attn(x2, grids)
        assert torch.equal(y2[:, :start], y[:, :start])
        assert not torch.allclose(y2[:, start:], y[:, start:])
        # changing the global token changes every output
        x3 = x.clone()
        x3[:, 0] += 1.0
        assert ((attn(x3, grids) - y).abs().amax(dim=-1) > 0).all()


# ------------------------------------------------------------------------------------------ RoPE


def test_rope_tables() -> None:
    ang = rope_angles([(3, 4)], 16)
    assert ang.dtype == torch.float64 and ang.shape == (12, 8)
    rows = torch.arange(3).repeat_interleave(4).double()
    cols = torch.arange(4).repeat(3).double()
    freqs = 10000.0 ** (-torch.arange(4).double() / 4)
    assert torch.allclose(ang[:, :4], rows[:, None] * freqs)  # first half of the pairs: the row
    assert torch.allclose(ang[:, 4:], cols[:, None] * freqs)  # second half: the column
    assert ang[0].abs().max() == 0  # position (0, 0)
    # positions restart in every grid; a 1x1 grid (the global token) is not rotated
    multi = rope_angles([(1, 1), (3, 4), (2, 2)], 16)
    assert multi.shape == (17, 8)
    assert torch.equal(multi[1:13], ang) and multi[0].abs().max() == 0 and multi[13].abs().max() == 0
    with pytest.raises(ValueError):
        rope_angles([(2, 2)], 6)


def test_rope_rotation_properties() -> None:
    g = torch.Generator().manual_seed(0)
    grids = [(4, 5)]
    ang = rope_angles(grids, 16)
    q = torch.randn(2, 3, 20, 16, generator=g)
    k = torch.randn(2, 3, 20, 16, generator=g)
    rq = apply_rope(q, ang)
    assert rq.dtype == q.dtype and rq.shape == q.shape
    # a rotation: every pair keeps its norm
    assert torch.allclose(rq.unflatten(-1, (8, 2)).norm(dim=-1), q.unflatten(-1, (8, 2)).norm(dim=-1), atol=1e-5)
    # position (0, 0) is the identity
    assert torch.equal(rq[:, :, 0], q[:, :, 0])
    # interleaved pairs: element 0 turns into element 1 (not into element dim/2 as in the half-split layout)
    e0 = torch.zeros(1, 1, 20, 16, dtype=torch.float64)
    e0[..., 0] = 1.0
    turned = apply_rope(e0, ang)[0, 0]
    assert torch.allclose(turned[:, 0], ang[:, 0].cos()) and torch.allclose(turned[:, 1], ang[:, 0].sin())
    assert turned[:, 2:].abs().max() == 0
    # relative: the score of the same vectors at positions p and p' depends only on p - p'
    qv, kv = q[0, 0, 0], k[0, 0, 0]

    def score(pq: int, pk: int) -> float:
        one = torch.stack([qv, kv])[None, None]
        a = torch.stack([ang[pq], ang[pk]])
        r = apply_rope(one.double(), a)[0, 0]
        return float(r[0] @ r[1])

    # grid (4, 5): index = row * 5 + col; (1, 2)-(0, 1) equals (3, 4)-(2, 3)
    assert math.isclose(score(1 * 5 + 2, 0 * 5 + 1), score(3 * 5 + 4, 2 * 5 + 3), rel_tol=1e-9, abs_tol=1e-9)
    assert not math.isclose(score(1 * 5 + 2, 0 * 5 + 1), score(1 * 5 + 2, 0 * 5 + 3), abs_tol=1e-6)


def test_rope_low_precision_input() -> None:
    ang = rope_angles([(2, 3)], 8)
    x = torch.randn(1, 2, 6, 8)
    out = apply_rope(x.to(torch.bfloat16), ang)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), apply_rope(x, ang), atol=3e-2)


# ------------------------------------------------------------------------------------------ the encoder


def _ceil_half(n: int) -> int:
    return (n + 1) // 2


@pytest.mark.parametrize("size", [(64, 96), (37, 53), (8, 8), (1, 1)])
def test_hint_shapes_any_size(size: tuple[int, int]) -> None:
    enc = _tiny_encoder()
    h, w = size
    for _ in range(3):  # the stem's three stride-2 convs round up
        h, w = _ceil_half(h), _ceil_half(w)
    expect = [(h, w)]
    for i in range(len(TINY.ch_mults)):
        if i < len(TINY.ch_mults) - 1:
            h, w = _ceil_half(h), _ceil_half(w)
        expect.append((h, w))
    with torch.no_grad():
        hints = enc(torch.rand(2, 3, *size) * 2 - 1)
    assert [tuple(t.shape) for t in hints] == [(2, c, *s) for c, s in zip(TINY.hint_channels, expect)]
    assert all(torch.isfinite(t).all() for t in hints)


def test_batch_rows_are_independent_and_stateless() -> None:
    enc = _tiny_encoder()
    x = torch.rand(3, 3, 40, 56) * 2 - 1
    with torch.no_grad():
        both = enc(x)
        single = enc(x[1:2])
        again = enc(x)
    for a, b, c in zip(both, single, again):
        assert torch.allclose(a[1:2], b, atol=1e-5)
        assert torch.equal(a, c)


def test_low_precision_forward() -> None:
    enc = _tiny_encoder()
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        ref = enc(x)
        low = enc.to(torch.bfloat16)(x)
    assert all(t.dtype == torch.bfloat16 for t in low)
    for a, b in zip(low, ref):
        assert (a.float() - b).abs().max() < 0.1 * b.abs().max() + 1e-3


def test_golden_fixture() -> None:
    res = kind_result("xl_sketch_encoder")
    assert res.passed, res.line()
    assert res.max_abs_diff <= 1e-5
