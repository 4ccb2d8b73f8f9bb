"""v1.5 ("switch"): split LoRA, split cross-attention, recovery transformer, conditioning assembly, layouts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomize as _randomize
from _helpers import state_shapes as _shapes

from colorize.config import FULL_MULT, TINY_MULT
from colorize.families.v15 import SWITCH_LORA
from colorize.families.v15.conditioning import lora_flags, official_fgbg_scales, switch_context
from colorize.families.v15.recovery import (
    ClusterTransformer,
    ClusterTransformerConfig,
    ScalarEmbedder,
    ScalarEmbedderConfig,
    infer_embedder_config,
    infer_recovery_config,
)
from colorize.masks.inputs import background_only_reference, sketch_mask_to_latent
from colorize.models.attention import AttentionPatches, AttentionSite, CrossAttention
from colorize.models.lora import Rank, SplitLoraConfig, SplitLoraLinear, infer_lora_config, resolve_rank
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.split_attention import MaskTokens, SplitAttention, SplitOptions
from colorize.models.unet import ATTENTION_BLOCK_ORDER, BLOCK_SCALE_FACTORS, DualCondUNet
from colorize.parity.core import load_fixture, run_fixture

PREFIXES = ("model.diffusion_model.", "thresh_embedder.", "transformer.", "control_encoder.")


def _split(options: SplitOptions, reference_scales: list[float] | None = None) -> AttentionPatches:
    """The split path of one U-Net call: the Eq. 5.4 cross-attention processor (and per-block strengths)."""
    return AttentionPatches(cross_attention=SplitAttention(options), reference_scales=reference_scales)


# ------------------------------------------------------------------ layouts and parity
def test_full_size_switch_layout(layout_dir: Path) -> None:
    embedder_cfg, recovery_cfg = ScalarEmbedderConfig(), ClusterTransformerConfig()  # the released sizes
    with torch.device("meta"):
        modules = {
            "model.diffusion_model.": DualCondUNet(FULL_MULT.unet, SWITCH_LORA),
            "thresh_embedder.": ScalarEmbedder(embedder_cfg),
            "transformer.": ClusterTransformer(recovery_cfg),
            "control_encoder.": SketchEncoder(FULL_MULT.sketch),
        }
    official = json.loads((layout_dir / "keys_switch.json").read_text())
    for prefix, module in modules.items():
        expected = {k: list(v) for k, v in official.items() if k.startswith(prefix)}
        assert _shapes(module, prefix) == expected, prefix
    # Parameter counts of the official classes built on the meta device: the split LoRA of
    # refnet/modules/lora.py:134-196 (34,352,128; U-Net incl. LoRA 900,262,852), ScalarEmbedder
    # (refnet/modules/embedder.py:310-326) and ClusterTransformer (refnet/modules/proj.py:58-124) at commit c9bd9fb.
    unet = modules["model.diffusion_model."]
    lora = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    assert lora == 34_352_128
    assert sum(p.numel() for p in unet.parameters()) == 900_262_852
    assert sum(p.numel() for p in modules["thresh_embedder."].parameters()) == 1_312_768
    assert sum(p.numel() for p in modules["transformer."].parameters()) == 75_821_056
    # The official constructor call ClusterTransformer(dim=1024, layers=6, token_length=256)
    # (configs/inference/switch.yaml:57-75) gives the same recovery transformer.
    assert ClusterTransformerConfig.from_official({"dim": 1024, "layers": 6, "token_length": 256}) == recovery_cfg
    # The configs are recoverable from the shapes alone.
    stripped = {p: {k[len(p):]: v for k, v in official.items() if k.startswith(p)} for p in PREFIXES}
    assert infer_embedder_config(stripped["thresh_embedder."]) == embedder_cfg
    assert infer_recovery_config(stripped["transformer."]) == recovery_cfg
    assert infer_lora_config(stripped["model.diffusion_model."]) == SWITCH_LORA


@pytest.mark.parametrize("name", ["switch_split_attention", "switch_conditioning"])
def test_switch_fixture_parity(fixture_dir: Path, name: str) -> None:
    fx = load_fixture(fixture_dir / f"{name}.json")
    res = run_fixture(fx)
    assert res.passed, (res.error, res.per_output)
    if name == "switch_split_attention":
        assert list(ATTENTION_BLOCK_ORDER) == fx.scalars["attention_block_order"]
        assert list(BLOCK_SCALE_FACTORS) == fx.scalars["attention_block_scale_factor"]
        for layer, ranks in fx.meta["lora_ranks_example"].items():  # the rank rule
            w = fx.weights("model.diffusion_model.")[layer + ".weight"]
            lora = fx.config["lora_config"]
            assert resolve_rank(lora["fr"], w.shape[1], w.shape[0]) == ranks["fg"]
            assert resolve_rank(lora["br"], w.shape[1], w.shape[0]) == ranks["bg"]


def test_rank_rule() -> None:
    assert resolve_rank(4, 320, 320) == 4
    assert [resolve_rank(0.5, c, c) for c in (320, 640, 1280)] == [160, 320, 640]
    assert [resolve_rank(0.5, 1024, c) for c in (320, 640, 1280)] == [160, 320, 512]
    with pytest.raises(ValueError):
        resolve_rank(0, 8, 8)


# ------------------------------------------------------------------ tiny split-LoRA U-Net vs v1
@pytest.fixture(scope="module")
def tiny() -> tuple[DualCondUNet, DualCondUNet]:
    cfg = TINY_MULT.unet
    v1 = DualCondUNet(cfg).eval()
    _randomize(v1, 1)
    switch = DualCondUNet(cfg, SplitLoraConfig(fg_rank=4, bg_rank=0.5)).eval()
    _randomize(switch, 2)  # random LoRA (ups non-zero), then the v1 base weights
    missing, unexpected = switch.load_state_dict(v1.state_dict(), strict=False)
    assert not unexpected and missing and all(".lora_" in k for k in missing)
    return v1, switch


def _inputs(b: int = 2, h: int = 8, w: int = 16, n: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, 4, h, w, generator=g)
    t = torch.tensor([999.0, 321.0])[:b]
    c1 = torch.randn(b, n, TINY_MULT.unet.context_dim, generator=g)
    c2 = torch.randn(b, n, TINY_MULT.unet.context_dim, generator=g)
    return x, t, c1, c2


@torch.no_grad()
def test_all_foreground_mask_without_lora_equals_v1(tiny) -> None:
    v1, switch = tiny
    x, t, c1, c2 = _inputs()
    ones = torch.ones(x.shape[0], 1, *x.shape[-2:])
    ctx = torch.cat([c1, c2], dim=1)
    ref = v1(x, t, c1)
    # fg strength 1, no merge: the background half and its strength have no effect.
    out = switch(x, t, ctx, None, _split(SplitOptions(mask=ones, bg_scale=0.3)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # All background: the background tokens at bg strength 1 act like a v1 context.
    out_bg = switch(x, t, ctx, None, _split(SplitOptions(mask=torch.zeros_like(ones), fg_scale=2.0)))
    torch.testing.assert_close(out_bg, v1(x, t, c2), rtol=1e-5, atol=1e-5)
    # Per-block reference scales act inside the split branches exactly as in v1.
    scales = torch.linspace(0.2, 1.5, 16).tolist()
    torch.testing.assert_close(switch(x, t, ctx, None, _split(SplitOptions(mask=ones), scales)),
                               v1(x, t, c1, None, AttentionPatches(reference_scales=scales)), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_lora_only_inside_masked_branches_and_never_sticky(tiny) -> None:
    """LoRA acts only inside the split-attention processor of the call that asks for it: the same U-Net called
    without the processor computes exactly the plain v1 path, before and after masked calls."""
    v1, switch = tiny
    x, t, c1, c2 = _inputs()
    ctx = torch.cat([c1, c2], dim=1)
    plain = v1(x, t, c1)
    torch.testing.assert_close(switch(x, t, c1), plain, rtol=0, atol=0)  # no split processor: LoRA never applied
    ones = torch.ones(x.shape[0], 1, *x.shape[-2:])
    zeros = torch.zeros_like(ones)

    def run(mask, fg, bg):
        return switch(x, t, ctx, None, _split(SplitOptions(mask=mask, use_fg_lora=fg, use_bg_lora=bg)))

    # All foreground: the fg LoRA changes the result, the bg LoRA cannot.
    fg_off = run(ones, False, False)
    assert (run(ones, True, False) - fg_off).abs().max() > 1e-3
    torch.testing.assert_close(run(ones, False, True), fg_off, rtol=0, atol=0)
    # All background: the reverse.
    bg_off = run(zeros, False, False)
    assert (run(zeros, False, True) - bg_off).abs().max() > 1e-3
    torch.testing.assert_close(run(zeros, True, False), bg_off, rtol=0, atol=0)
    # A masked call with both LoRAs on leaves no state behind; base weights are untouched.
    torch.testing.assert_close(switch(x, t, c1), plain, rtol=0, atol=0)
    for (k, w), (_, w1) in zip(
        ((k, v) for k, v in switch.state_dict().items() if ".lora_" not in k), v1.state_dict().items()
    ):
        assert torch.equal(w, w1), k


@torch.no_grad()
def test_mixed_mask_selects_per_position(tiny) -> None:
    """A half-foreground mask differs from both uniform masks; a batch-1 mask is tiled over the batch and
    the rows stay independent (as in a CFG batch)."""
    _, switch = tiny
    x, t, c1, c2 = _inputs()
    ctx = torch.cat([c1, c2], dim=1)
    mask = torch.zeros(1, 1, *x.shape[-2:])
    mask[..., : x.shape[-1] // 2] = 1.0
    both = switch(x, t, ctx, None, _split(SplitOptions(mask=mask, use_fg_lora=True, use_bg_lora=True)))
    rows = [switch(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], None,
                   _split(SplitOptions(mask=mask, use_fg_lora=True, use_bg_lora=True))) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(rows), rtol=1e-5, atol=1e-5)
    for uniform in (torch.ones_like(mask), torch.zeros_like(mask)):
        other = switch(x, t, ctx, None, _split(SplitOptions(mask=uniform, use_fg_lora=True, use_bg_lora=True)))
        assert (both - other).abs().max() > 1e-3
    with pytest.raises(ValueError):
        switch(x, t, ctx[:, :-1], None, _split(SplitOptions(mask=mask)))  # odd token count


@torch.no_grad()
def test_split_attention_refuses_a_missing_context(tiny) -> None:
    """Split attention needs a ``[foreground N | background N]`` context tensor; ``None`` (the empty reference of
    the plain path) is a clear ValueError, not the query tokens split in two."""
    _, switch = tiny
    x, t, _, _ = _inputs()
    mask = torch.zeros(1, 1, *x.shape[-2:])
    mask[..., : x.shape[-1] // 2] = 1.0
    with pytest.raises(ValueError):
        switch(x, t, None, None, _split(SplitOptions(mask=mask)))


# ------------------------------------------------------------------ split cross-attention (Eq. 5.4)
def _split_lora_attention(dim: int, ctx_dim: int, heads: int, d: int,
                          ranks: tuple[Rank, Rank] | None) -> CrossAttention:
    """A cross-attention layer whose ``to_q/to_k/to_v`` carry fg/bg LoRA pairs of these ranks (the official rank
    rule, as ``add_split_lora`` builds them inside a U-Net); ``None``: a plain layer."""
    attn = CrossAttention(dim, ctx_dim, heads, d)
    if ranks is not None:
        inner = heads * d
        for name, fan_in in (("to_q", dim), ("to_k", ctx_dim), ("to_v", ctx_dim)):
            fg, bg = (resolve_rank(r, fan_in, inner) for r in ranks)
            setattr(attn, name, SplitLoraLinear(fan_in, inner, fg, bg))
    return attn


def _mask_as_tokens(mask: torch.Tensor) -> torch.Tensor:
    """A ``(b, 1, h, w)`` mask on its own ``h×w`` token grid, ``(b, h·w, 1)`` (row-major, as the layers' tokens)."""
    return mask.flatten(2).transpose(1, 2)


def _manual_attention(x, tokens, wq, wk, wv, heads):
    q, k, v = x @ wq.T, tokens @ wk.T, tokens @ wv.T
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (z.reshape(b, -1, heads, d).transpose(1, 2) for z in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (att @ v).transpose(1, 2).reshape(b, n, inner)


@torch.no_grad()
@pytest.mark.parametrize("use_fg,use_bg", [(False, True), (True, False), (True, True)])
def test_split_cross_attention_matches_equation(use_fg: bool, use_bg: bool) -> None:
    torch.manual_seed(0)
    heads, d, dim, ctx_dim, n_tok = 2, 8, 16, 12, 5
    attn = _split_lora_attention(dim, ctx_dim, heads, d, (3, 0.5)).double()
    _randomize(attn, 3)
    x = torch.randn(2, 6, dim, dtype=torch.float64)
    fg_tok, bg_tok = torch.randn(2, 2, n_tok, ctx_dim, dtype=torch.float64)
    mask4d = torch.rand(2, 1, 2, 3)  # the 6 query positions as a 2x3 token grid
    opts = SplitOptions(mask=mask4d, threshold=0.4, fg_scale=1.3, bg_scale=0.6, merge_scale=0.25,
                        use_fg_lora=use_fg, use_bg_lora=use_bg, lora_scale=0.8)
    ref_scale = 1.1
    site = AttentionSite(index=0, cross=True, grid=(2, 3))
    got = attn(x, torch.cat([fg_tok, bg_tok], dim=1), _split(opts, [ref_scale]), site)

    def weights(branch, on):
        out = []
        for lin in (attn.to_q, attn.to_k, attn.to_v):
            w = lin.weight.clone()
            if on:
                down, up = getattr(lin, f"lora_down_{branch}"), getattr(lin, f"lora_up_{branch}")
                w = w + 0.8 * up.weight @ down.weight
            out.append(w)
        return out

    mask = _mask_as_tokens(mask4d).double()
    fg = _manual_attention(x, fg_tok, *weights("fg", use_fg), heads) * ref_scale * 1.3
    bg = _manual_attention(x, bg_tok, *weights("bg", use_bg), heads) * ref_scale * 0.6
    fg = 0.75 * fg + 0.25 * bg
    expected = attn.to_out(torch.where(mask > 0.4, fg, bg))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert attn.to_q.lora_down_bg.out_features == 8  # int(0.5 * min(16, 16))
    assert attn.to_k.lora_down_bg.out_features == 6  # int(0.5 * min(12, 16))


@torch.no_grad()
def test_tie_rule_lora_vs_plain_layers() -> None:
    """At mask == threshold LoRA layers take the background, layers without LoRA the foreground."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16)
    fg_tok, bg_tok = torch.randn(2, 1, 4, 8)
    mask = torch.full((1, 1, 1, 3), 0.25)  # on the layer's 1x3 token grid
    opts = SplitOptions(mask=mask, threshold=0.25)
    site = AttentionSite(index=0, cross=True, grid=(1, 3))
    for lora, picks in (((2, 2), "bg"), (None, "fg")):
        attn = _split_lora_attention(16, 8, 2, 8, lora)
        got = attn(x, torch.cat([fg_tok, bg_tok], dim=1), _split(opts), site)
        tokens = bg_tok if picks == "bg" else fg_tok
        torch.testing.assert_close(got, attn(x, tokens), rtol=1e-6, atol=1e-6)


def test_mask_resize_matches_scale_factor_resize() -> None:
    """Resizing to the token grid equals the official ``interpolate(scale_factor=1/ds, bicubic)``."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(1, 1, 16, 24, generator=g)
    tokens = MaskTokens(SplitOptions(mask=mask).mask)  # what SplitAttention resizes per block
    for sf in (1.0, 0.5, 0.25, 0.125):
        h, w = int(16 * sf), int(24 * sf)
        official = F.interpolate(mask, scale_factor=sf, mode="bicubic").flatten(2).transpose(1, 2)
        got = tokens((h, w), 3, torch.device("cpu"))
        assert got.shape == (3, h * w, 1)  # tiled over the batch
        torch.testing.assert_close(got, official.expand(3, -1, -1), rtol=0, atol=0)


@torch.no_grad()
def test_bfloat16_split_path_runs() -> None:
    unet = DualCondUNet(TINY_MULT.unet, SWITCH_LORA, dtype=torch.bfloat16).eval()
    x, t, c1, c2 = _inputs(b=1, h=16, w=8)
    out = unet(x, t, torch.cat([c1, c2], 1), None,
               _split(SplitOptions(mask=torch.rand(1, 1, 16, 8), use_bg_lora=True)))
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()


# ------------------------------------------------------------------ recovery transformer / threshold embedder
@torch.no_grad()
def test_scalar_embedder_formula() -> None:
    emb = ScalarEmbedder(ScalarEmbedderConfig(embed_dim=8, out_dim=6))
    _randomize(emb, 4)
    values = torch.tensor([0.5, 0.05])
    k = torch.arange(4, dtype=torch.float32)
    args = values[:, None] * torch.exp(-math.log(10000.0) * k / 4)[None]
    sinus = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    l0, l2 = emb.embed_layer[0], emb.embed_layer[2]
    expected = l2(F.silu(l0(sinus)))[:, None]
    torch.testing.assert_close(emb(values), expected)
    torch.testing.assert_close(emb([0.5, 0.05]), expected)


@torch.no_grad()
def test_cluster_transformer_is_a_set_function_of_its_input() -> None:
    cfg = ClusterTransformerConfig(dim=32, layers=2, token_length=5, heads=4, head_width=8)
    tr = ClusterTransformer(cfg)
    _randomize(tr, 5)
    assert tr.layers[0][2].heads == 4
    tokens = torch.randn(2, 7, 32)
    out = tr(tokens)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(tr(tokens[:, torch.randperm(7)]), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr(tokens[1:]), out[1:], rtol=1e-5, atol=1e-5)
    assert tr(torch.randn(1, 3, 32)).shape == (1, 5, 32)  # any input token count


# ------------------------------------------------------------------ conditioning assembly
@pytest.fixture(scope="module")
def extras() -> tuple[ScalarEmbedder, ClusterTransformer]:
    emb = ScalarEmbedder(ScalarEmbedderConfig(embed_dim=16, out_dim=32))
    tr = ClusterTransformer(ClusterTransformerConfig(dim=32, layers=1, token_length=6, heads=2, head_width=16))
    _randomize(emb, 6)
    _randomize(tr, 7)
    return emb, tr


@torch.no_grad()
def test_switch_context_modes(extras) -> None:
    emb, tr = extras
    g = torch.Generator().manual_seed(1)
    fg, bg_ref, bg_img = torch.randn(3, 2, 6, 32, generator=g)
    th_r, th_s = emb([0.5, 0.05])
    kw = {"thresh_embedder": emb, "transformer": tr, "bg_reference_tokens": bg_ref}

    c = switch_context("background", fg, **kw)
    assert (c.use_fg_lora, c.use_bg_lora) == (False, True)
    torch.testing.assert_close(c.context, torch.cat([fg + th_s, tr(bg_ref + th_r)], 1))
    c = switch_context("background", fg, thresh_embedder=emb, background_tokens=bg_img)  # separate background
    torch.testing.assert_close(c.context, torch.cat([fg + th_s, bg_img + th_r], 1))
    # Training-time assembly: official refnet/models/trainer/mask.py:62-92 adds no th_s to the foreground tokens.
    c = switch_context("background", fg, sketch_threshold_on_fg=False, **kw)
    torch.testing.assert_close(c.context[:, :6], fg)

    c = switch_context("foreground", fg)
    assert (c.use_fg_lora, c.use_bg_lora) == (True, False)
    torch.testing.assert_close(c.context, torch.cat([fg, fg], 1))

    both = switch_context("both", fg, **kw)
    assert (both.use_fg_lora, both.use_bg_lora) == (True, True)
    torch.testing.assert_close(both.context, switch_context("background", fg, **kw).context)
    # Official app quirk (refnet/models/switch.py:221-241): with both enhancements the context is repeated.
    quirk = switch_context("both", fg, repeat_both=True, **kw)
    torch.testing.assert_close(quirk.context, torch.cat([both.context, both.context], 1))

    opts = both.split_options(torch.ones(1, 1, 4, 4), threshold=0.2, fg_scale=1.5)
    assert (opts.use_fg_lora, opts.use_bg_lora, opts.threshold, opts.fg_scale) == (True, True, 0.2, 1.5)
    with pytest.raises(ValueError):
        switch_context("background", fg, thresh_embedder=emb)
    with pytest.raises(ValueError):
        lora_flags("everything")  # type: ignore[arg-type]
    assert official_fgbg_scales("background", 1.4, 0.6) == (1.0, 1.0)
    assert official_fgbg_scales("both", 1.4, 0.6) == (1.0, 1.0)
    assert official_fgbg_scales("foreground", 1.4, 0.6) == (1.4, 0.6)


def test_mask_helpers() -> None:
    ref = torch.rand(1, 3, 16, 16) * 2 - 1
    rmask = torch.zeros(1, 1, 16, 16)
    rmask[..., 4:12, 4:12] = 1.0
    bg_only = background_only_reference(ref, rmask, 0.5)
    assert torch.equal(bg_only[..., 4:12, 4:12], torch.ones(1, 3, 8, 8))
    assert torch.equal(bg_only[..., :4, :], ref[..., :4, :])
    smask = torch.zeros(1, 1, 64, 128)
    smask[..., :, :64] = 1.0
    latent = sketch_mask_to_latent(smask)
    assert latent.shape == (1, 1, 8, 16)
    assert latent[..., :, :6].min() > 0.99 and latent[..., :, 10:].abs().max() < 0.01


def test_tiny_switch_state_dict_round_trip_through_config_inference(extras) -> None:
    """What a loader does: detect the family, split by prefix, infer every config from shapes, build on meta,
    load strictly."""
    from colorize.families import detect_family, split_checkpoint
    from colorize.loader import checkpoint_config

    emb, tr = extras
    lora = SplitLoraConfig(fg_rank=4, bg_rank=0.5)
    unet = DualCondUNet(TINY_MULT.unet, lora)
    sd = {**{"model.diffusion_model." + k: v for k, v in unet.state_dict().items()},
          **{"control_encoder." + k: v for k, v in SketchEncoder(TINY_MULT.sketch).state_dict().items()},
          **{"thresh_embedder." + k: v for k, v in emb.state_dict().items()},
          **{"transformer." + k: v for k, v in tr.state_dict().items()}}
    family = detect_family(sd)
    config, source = checkpoint_config(family, sd)
    assert family.name == "switch" and source == "shapes"
    assert config.version == "switch" and config.unet == TINY_MULT.unet
    parts = split_checkpoint(sd)
    lora_cfg = infer_lora_config(parts["unet"])
    embedder_cfg = infer_embedder_config(parts["thresh_embedder"])
    recovery_cfg = infer_recovery_config(parts["transformer"], head_width=16)
    assert lora_cfg == lora and recovery_cfg == tr.cfg and embedder_cfg == emb.cfg
    for factory, part in ((lambda: DualCondUNet(config.unet, lora_cfg), "unet"),
                          (lambda: ScalarEmbedder(embedder_cfg), "thresh_embedder"),
                          (lambda: ClusterTransformer(recovery_cfg), "transformer")):
        with torch.device("meta"):
            module = factory()
        module.load_state_dict(parts[part], strict=True, assign=True)
