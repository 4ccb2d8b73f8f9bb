"""ColorizeDiffusion XL reference conditioning (``colorize.families.xl.clip_bigg``, ``.tagger``, ``.conditioning``):
full-size sizes and layouts, config inference, SwinV2 windows and the shift mask, preprocessing, ClusterConcat and
the contexts, and the golden fixture."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _helpers import kind_result
from _helpers import randomize as _randomize
from _helpers import state_shapes as _shapes

from colorize.families.xl.clip_bigg import (
    CLIP_MEAN,
    CLIP_STD,
    ClipVisionConfig,
    ClipVisionTower,
    infer_clip_config,
    preprocess_clip,
)
from colorize.families.xl.conditioning import (
    ClusterConcat,
    ClusterConcatConfig,
    ReferenceConditioner,
    ScalarEmbedder,
    infer_cluster_concat_config,
    paint_character_white,
    unet_mask,
)
from colorize.families.xl.tagger import (
    SwinV2Block,
    SwinV2Tagger,
    TaggerConfig,
    infer_tagger_config,
    preprocess_tagger,
    relative_coords_table,
    relative_position_index,
    shift_attention_mask,
    to_timm_layout,
    window_and_shift,
    window_partition,
    window_reverse,
)
from colorize.families.xl.unet import adm_vector
from colorize.models.unet import timestep_embedding

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_CLIP = ClipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                             image_size=56, patch_size=14, projection_dim=24)
#: A small tagger whose stages have 2 blocks (the second shifted), a window clipped in the last stage.
TINY_TAGGER = TaggerConfig(img_size=64, embed_dim=8, depths=(2, 2, 1, 2), num_heads=(1, 2, 2, 4), window_size=4,
                           num_classes=7, cpb_hidden=16)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- full size -------------------------------------------------------------------------------------------------


def test_full_size_parameter_counts() -> None:
    with torch.device("meta"):
        clip, tagger, proj = ClipVisionTower(), SwinV2Tagger(), ClusterConcat()
    assert _count(clip) == 1_844_907_264
    assert _count(tagger) == 96_203_891
    assert _count(proj) == 15_478_528
    assert tagger.cfg.num_features == 1024 and tagger.cfg.grid == 14
    assert clip.cfg.num_positions == 257


def test_full_size_hf_and_timm_key_names() -> None:
    with torch.device("meta"):
        clip, tagger = ClipVisionTower(), SwinV2Tagger()
    keys = set(clip.state_dict())
    assert "vision_model.pre_layrnorm.weight" in keys and "visual_projection.weight" in keys
    assert "vision_model.encoder.layers.47.self_attn.out_proj.bias" in keys
    assert "vision_model.embeddings.class_embedding" in keys
    assert len(keys) == 776
    tk = set(tagger.state_dict())
    assert "layers.2.blocks.17.attn.cpb_mlp.2.weight" in tk and "layers.3.downsample.reduction.weight" in tk
    assert "head.fc.weight" in tk and "layers.0.downsample.reduction.weight" not in tk
    assert not any(k.endswith(("relative_position_index", "relative_coords_table", "attn_mask")) for k in tk)
    assert tuple(tagger.state_dict()["layers.0.blocks.0.attn.logit_scale"].shape) == (4, 1, 1)


def test_cluster_concat_matches_official_layout(layout_dir: Path) -> None:
    official = json.loads((layout_dir / "keys_xl_sdxl.json").read_text())
    want = {k: list(v) for k, v in official.items() if k.startswith("proj.")}
    with torch.device("meta"):
        proj = ClusterConcat()
    assert _shapes(proj, "proj.") == want
    cfg = infer_cluster_concat_config({k[len("proj."):]: torch.empty(v, device="meta") for k, v in want.items()})
    assert cfg == ClusterConcatConfig() and cfg.heads == 10


# --- config inference ------------------------------------------------------------------------------------------


def test_clip_config_inference_round_trip() -> None:
    sd = ClipVisionTower(TINY_CLIP).state_dict()
    assert infer_clip_config(sd, num_attention_heads=4) == TINY_CLIP
    prefixed = {"cond_stage_model.model." + k: v for k, v in sd.items()}
    assert infer_clip_config(prefixed, "cond_stage_model.model.", 4) == TINY_CLIP
    with torch.device("meta"):
        full = ClipVisionTower().state_dict()
    assert infer_clip_config(full) == ClipVisionConfig()  # bigG's 16 heads from the known sizes
    hf = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 56, "patch_size": 14, "projection_dim": 24, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
          "num_channels": 3, "dropout": 0.0}
    assert ClipVisionConfig.from_hf(hf) == TINY_CLIP
    with pytest.raises(ValueError, match="quick_gelu"):
        ClipVisionConfig.from_hf({**hf, "hidden_act": "quick_gelu"})


def test_clip_loads_hf_file_with_position_ids() -> None:
    src = ClipVisionTower(TINY_CLIP)
    _randomize(src, 1)
    sd = dict(src.state_dict())
    sd["vision_model.embeddings.position_ids"] = torch.arange(TINY_CLIP.num_positions)[None]
    sd["text_projection.weight"], sd["logit_scale"] = torch.zeros(24, 16), torch.zeros(())  # a whole CLIPModel
    m = ClipVisionTower.from_state_dict(sd, TINY_CLIP)
    x = torch.rand(1, 3, 40, 30) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m.reference_tokens(x), src.reference_tokens(x))
        assert m.reference_tokens(x).shape == (1, 17, 24)


def test_tagger_config_inference_round_trip() -> None:
    sd = SwinV2Tagger(TINY_TAGGER).state_dict()
    assert infer_tagger_config(sd, img_size=64, window_size=4) == TINY_TAGGER
    prefixed = {"img_embedder.model." + k: v for k, v in sd.items()}
    assert infer_tagger_config(prefixed, "img_embedder.model.", 64, 4) == TINY_TAGGER
    kw = {"act_layer": "gelu", "img_size": 64, "window_size": 4, "embed_dim": 8, "depths": [2, 2, 1, 2],
          "num_heads": [1, 2, 2, 4]}
    assert TaggerConfig.from_timm_kwargs(kw, 7) == TaggerConfig(**{**TINY_TAGGER.__dict__, "cpb_hidden": 512})


def test_tagger_loads_an_older_timm_layout() -> None:
    """timm < 0.9 exports: downsample at the end of the previous stage, ``head.weight``, derived buffers."""
    src = SwinV2Tagger(TINY_TAGGER).eval()
    _randomize(src, 2)
    old = {}
    for k, v in src.state_dict().items():
        if ".downsample." in k:
            i, rest = k[len("layers."):].split(".", 1)
            k = f"layers.{int(i) - 1}.{rest}"
        elif k.startswith("head.fc."):
            k = "head." + k.split(".")[-1]
        old[k] = v
    old["layers.0.blocks.1.attn_mask"] = torch.zeros(1)
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(1)
    assert set(to_timm_layout(old)) == set(src.state_dict())
    # the project's meta-device loader (no buffer may stay on meta)
    from colorize.checkpoint.assign import materialize

    built = materialize(lambda: SwinV2Tagger(TINY_TAGGER), to_timm_layout(old), "tagger")
    assert not any(t.is_meta for t in built.buffers())
    m = SwinV2Tagger.from_state_dict(old, infer_tagger_config(old, img_size=64, window_size=4))
    x = torch.rand(1, 3, 20, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m.features(x), src.features(x))


# --- SwinV2 windows --------------------------------------------------------------------------------------------


def test_window_partition_and_reverse() -> None:
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).view(2, 4, 6, 3)
    w = window_partition(x, (2, 3))
    assert w.shape == (2 * 2 * 2, 6, 3)
    # window 1 of image 0 = rows 0-1, columns 3-5, row-major inside the window
    assert torch.equal(w[1], x[0, 0:2, 3:6].reshape(6, 3))
    assert torch.equal(w[6], x[1, 2:4, 0:3].reshape(6, 3))
    assert torch.equal(window_reverse(w, (2, 3), 4, 6), x)


@pytest.mark.parametrize("h,w,ws,s", [(8, 8, 4, 2), (12, 8, 4, 2), (6, 6, 3, 1), (12, 12, 4, 2)])
def test_shift_mask_allows_exactly_the_unwrapped_neighbours(h: int, w: int, ws: int, s: int) -> None:
    """After rolling by −shift, two tokens of one window may attend iff they were within one window of each other
    in the unrolled image (no wrap-around across the border)."""
    mask = shift_attention_mask(h, w, (ws, ws), (s, s))
    assert mask is not None and mask.shape == ((h // ws) * (w // ws), ws * ws, ws * ws)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    orig = torch.stack([rows, cols], dim=-1).float()[None]
    rolled = torch.roll(orig, shifts=(-s, -s), dims=(1, 2))
    win = window_partition(rolled, (ws, ws))  # (nW, N, 2) original coordinates
    d = (win[:, :, None, :] - win[:, None, :, :]).abs()
    allowed = (d[..., 0] < ws) & (d[..., 1] < ws)
    assert torch.equal(mask == 0, allowed)
    assert shift_attention_mask(h, w, (ws, ws), (0, 0)) is None


def test_window_and_shift_clip_to_the_grid() -> None:
    assert window_and_shift((112, 112), 14, 7) == ((14, 14), (7, 7))
    assert window_and_shift((14, 14), 14, 7) == ((14, 14), (0, 0))
    assert window_and_shift((8, 16), 14, 7) == ((8, 14), (0, 7))
    blk = SwinV2Block(8, 2, (14, 14), 14, 7)
    assert blk.shift == (0, 0) and blk.attn_mask is None


def test_relative_position_tables() -> None:
    t = relative_coords_table((3, 3))
    assert t.shape == (5, 5, 2)
    assert torch.allclose(t[2, 2], torch.zeros(2))
    edge = math.log2(8 + 1) / math.log2(8)  # |Δ| = window−1 → 8 before the log
    assert torch.allclose(t[0, 4], torch.tensor([-edge, edge]))
    idx = relative_position_index((3, 3))
    assert idx.shape == (9, 9)
    assert torch.all(idx.diagonal() == 12)  # (0, 0) is the table's centre
    assert idx[0, 8].item() == 0 and idx[8, 0].item() == 24  # Δ = (−2, −2) and (+2, +2)


def test_shifted_blocks_run_and_are_not_plain_blocks() -> None:
    """The second block of each early stage is shifted: its output differs from the same block unshifted."""
    m = SwinV2Tagger(TINY_TAGGER).eval()
    _randomize(m, 3)
    blk = m.layers[0].blocks[1]
    assert blk.shift == (2, 2) and blk.attn_mask is not None
    x = torch.randn(1, 16, 16, 8)
    with torch.no_grad():
        shifted = blk(x)
        blk.shift, mask = (0, 0), blk.attn_mask
        blk.attn_mask = None
        plain = blk(x)
        blk.shift, blk.attn_mask = (2, 2), mask
    assert not torch.allclose(shifted, plain)
    with torch.no_grad():
        tokens = m.features(torch.rand(2, 3, 30, 20) * 2 - 1)
    assert tokens.shape == (2, TINY_TAGGER.grid**2, TINY_TAGGER.num_features) and torch.isfinite(tokens).all()
    assert m.logits(tokens).shape == (2, 4, 7)


def _brute_force_window_attention(blk: SwinV2Block, x: torch.Tensor) -> torch.Tensor:
    """The attention branch of a (shifted) block token by token, in original coordinates: a query sees the keys of
    its shifted window that are within one window of it without wrapping round the border; the position bias is
    read from the 2-D table at the coordinate difference."""
    a = blk.attn.double()
    b, h, w, c = x.shape
    ws, s = blk.ws[0], blk.shift[0]
    heads, hd = a.heads, c // a.heads
    x = x.double()
    bias_vec = torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
    qkv = torch.nn.functional.linear(x, a.qkv.weight, bias_vec).view(b, h, w, 3, heads, hd)
    q, k, v = torch.nn.functional.normalize(qkv[..., 0, :, :], dim=-1), qkv[..., 1, :, :], qkv[..., 2, :, :]
    k = torch.nn.functional.normalize(k, dim=-1)
    table = 16 * torch.sigmoid(a.cpb_mlp(a.relative_coords_table.double()))  # (2ws-1, 2ws-1, heads)
    scale = torch.clamp(a.logit_scale, max=math.log(100.0)).exp().view(heads)
    out = torch.zeros(b, h, w, heads, hd, dtype=torch.float64)
    for y in range(h):
        for xx in range(w):
            win = (((y - s) % h) // ws, ((xx - s) % w) // ws)
            keys = [(y2, x2) for y2 in range(h) for x2 in range(w)
                    if (((y2 - s) % h) // ws, ((x2 - s) % w) // ws) == win and abs(y2 - y) < ws and abs(x2 - xx) < ws]
            ky = torch.tensor([p[0] for p in keys])
            kx = torch.tensor([p[1] for p in keys])
            logits = torch.einsum("bnd,bknd->bnk", q[:, y, xx], k[:, ky, kx]) * scale[None, :, None]
            logits = logits + table[y - ky + ws - 1, xx - kx + ws - 1].T[None]
            out[:, y, xx] = torch.einsum("bnk,bknd->bnd", torch.softmax(logits, dim=-1), v[:, ky, kx])
    res = a.proj(out.reshape(b, h, w, c))
    blk.attn.float()
    return res


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_matches_a_token_by_token_computation(shift: int) -> None:
    blk = SwinV2Block(8, 2, (8, 8), 4, shift, cpb_hidden=16).eval()
    _randomize(blk, 7)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        want = _brute_force_window_attention(blk, x)
        got = blk._attn(x)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()


def test_logit_scale_is_clamped_at_log_100() -> None:
    m = SwinV2Tagger(TINY_TAGGER).eval()
    _randomize(m, 4)
    attn = m.layers[0].blocks[0].attn
    x = torch.randn(3, 16, 8)
    with torch.no_grad():
        attn.logit_scale.fill_(math.log(100.0))
        a = attn(x)
        attn.logit_scale.fill_(9.0)
        b = attn(x)
    assert torch.equal(a, b)


# --- preprocessing ---------------------------------------------------------------------------------------------


def test_tagger_preprocessing_swaps_to_bgr_without_normalising() -> None:
    img = torch.empty(1, 3, 37, 53)
    img[:, 0], img[:, 1], img[:, 2] = -0.5, 0.25, 0.75
    out = preprocess_tagger(img, 448)
    assert out.shape == (1, 3, 448, 448)
    # align_corners bicubic of a constant image is that constant
    for c, v in enumerate((0.75, 0.25, -0.5)):
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], v), atol=1e-6)
    ramp = torch.rand(1, 3, 20, 30)
    assert torch.equal(preprocess_tagger(ramp, 448), preprocess_tagger(ramp.flip(1), 448).flip(1))


def test_clip_preprocessing_maps_to_clip_statistics() -> None:
    img = torch.full((2, 3, 50, 70), 0.2)
    out = preprocess_clip(img, 224)
    assert out.shape == (2, 3, 224, 224)
    for c in range(3):
        want = (0.6 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], want), atol=1e-5)
    # the resize is torch's antialiased bicubic with align_corners, before the affine maps (they commute with it)
    x = torch.rand(1, 3, 30, 40) * 2 - 1
    r = torch.nn.functional.interpolate(x, (224, 224), mode="bicubic", align_corners=True, antialias=True)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(preprocess_clip(x, 224) * std + mean, (r + 1) / 2, atol=1e-6)


# --- ClusterConcat, scalars, contexts ----------------------------------------------------------------------------


def test_scalar_embedder_and_adm_vector() -> None:
    e = ScalarEmbedder(256)(torch.tensor([0.0, 1.0]))
    assert e.shape == (2, 256) and not list(ScalarEmbedder().parameters())
    assert torch.equal(e[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    assert torch.allclose(e[1, :2], torch.tensor([math.cos(1.0), math.cos(10000 ** (-1 / 128))]))
    assert torch.allclose(e[1, 128:130], torch.tensor([math.sin(1.0), math.sin(10000 ** (-1 / 128))]))
    y = adm_vector(64, 100, 3)
    assert y.shape == (3, 512)
    assert torch.equal(y[2, :256], timestep_embedding(torch.tensor([80.0]), 256)[0])
    assert torch.equal(y[0, 256:], timestep_embedding(torch.tensor([7.0]), 256)[0])


def _tiny_conditioner(seed: int = 5) -> ReferenceConditioner:
    clip = ClipVisionTower(TINY_CLIP)
    tagger = SwinV2Tagger(TINY_TAGGER)
    proj = ClusterConcat(ClusterConcatConfig(input_dim=24, c_dim=TINY_TAGGER.num_features, output_dim=16,
                                             token_length=TINY_TAGGER.grid**2, dim_head=8))
    cond = ReferenceConditioner(clip, tagger, proj).eval()
    _randomize(cond, seed)
    return cond


def test_cluster_concat_equations() -> None:
    proj = ClusterConcat(ClusterConcatConfig(input_dim=12, c_dim=5, output_dim=6, token_length=3, dim_head=4)).eval()
    _randomize(proj, 6)
    clip, wd = torch.randn(2, 7, 12), torch.randn(2, 3, 5)
    with torch.no_grad():
        a = proj.attn
        q, k, v = (t.view(2, 7, 3, 4).transpose(1, 2) for t in (a.to_q(clip), a.to_k(clip), a.to_v(clip)))
        w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        att = a.to_out[0]((w @ v).transpose(1, 2).reshape(2, 7, 12))[:, :3]
        h = torch.cat([proj.norm(att), wd], dim=-1)
        p = proj.proj
        want = p[3](p[2](torch.nn.functional.silu(p[0](h))))
        assert torch.allclose(proj(clip, wd), want, atol=1e-6)


def test_contexts_plain_empty_and_bg_enhance() -> None:
    cond = _tiny_conditioner()
    ref = torch.rand(1, 3, 40, 36) * 2 - 1
    rmask = torch.zeros(1, 1, 40, 36)
    rmask[..., 10:30, 8:20] = 1
    with torch.no_grad():
        ctx, cls = cond.embed(ref)
        n = TINY_TAGGER.grid**2
        assert ctx.shape == (1, n, 16) and cls.shape == (1, 1, 24)
        assert torch.equal(cond.context(ref, 3), ctx.expand(3, -1, -1))
        assert torch.equal(cond.context(None, 2), torch.zeros(2, n, 16))
        both = cond.context_bg_enhance(ref, rmask, 2, 0.5)
        assert both.shape == (2, 2 * n, 16)
        assert torch.allclose(both[:, :n], ctx.expand(2, -1, -1), atol=1e-6)
        bg = paint_character_white(ref, rmask, 0.5)
        assert torch.allclose(both[:, n:], cond.embed(bg)[0].expand(2, -1, -1), atol=1e-6)
    assert torch.all(bg[..., 10:30, 8:20] == 1) and torch.equal(bg[..., :10, :], ref[..., :10, :])
    smask = torch.rand(1, 1, 64, 96)
    m = unet_mask(smask, 2)
    assert m.shape == (2, 1, 8, 12) and torch.equal(m[1, 0], smask[0, 0, ::8, ::8])


# --- golden fixture --------------------------------------------------------------------------------------------


def test_xl_conditioning_fixture_parity() -> None:
    res = kind_result("xl_conditioning")
    bad = {k: v for k, v in res.per_output.items() if not v[2]}
    assert res.passed and not bad, (res.error, bad)
