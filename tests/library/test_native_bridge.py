"""The host bridge's library part (``colorize.native``), without ComfyUI: the SD2.1 layout a host builds, the
split of a checkpoint into host U-Net / colorizer modules, and the per-step math (the library's attention
processors called on a host's ``q, k, v``, the v2 skip warp) against the library's own modules."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from colorize.config import TINY_MULT, UNetConfig
from colorize.families import get_family, split_checkpoint
from colorize.families.v2.unet import V2UNet, decoder_skip_channels, warp_skip
from colorize.models.attention import (
    AttentionCall,
    AttentionPatches,
    AttentionSite,
    CrossAttention,
    SpatialTransformer,
    attend_heads,
    plain_attention,
)
from colorize.models.split_attention import MaskTokens, SplitAttention, SplitOptions
from colorize.models.unet import ATTENTION_BLOCK_ORDER, DualCondUNet, add_split_lora
from colorize.native import (
    AttentionLora,
    attention_blocks,
    chunk_hints,
    hint_block_indices,
    host_unet_config,
    read_native_checkpoint,
    split_unet_state_dict,
    token_grid,
)
from colorize.native.extras import lora_shapes
from colorize.tiny import (
    CHECKPOINT_NAMES,
    build_tiny_state_dicts,
    tiny_config,
    write_tiny_weights,
)

CONFIGS = {"full": UNetConfig(), "tiny": TINY_MULT.unet, "tiny_v2": tiny_config("v2").unet}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_tiny_weights(tmp_path_factory.mktemp("native_lib"), versions=("mult", "switch", "v2"))
    return {v: paths[n] for v, n in CHECKPOINT_NAMES.items() if n in paths}


def test_host_unet_config_is_sd21_with_conv_projections() -> None:
    cfg = host_unet_config(UNetConfig())
    # ComfyUI's SD2.1 model-detection values, except the released 1x1-conv proj_in/out
    assert cfg["num_res_blocks"] == [2, 2, 2, 2] and cfg["channel_mult"] == [1, 2, 4, 4]
    assert cfg["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert cfg["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert cfg["transformer_depth_middle"] == 1 and cfg["context_dim"] == 1024 and cfg["num_head_channels"] == 64
    assert cfg["use_linear_in_transformer"] is False and cfg["adm_in_channels"] is None
    tiny = host_unet_config(TINY_MULT.unet)
    assert tiny["model_channels"] == 32 and tiny["num_head_channels"] == 16 and tiny["context_dim"] == 64


@pytest.mark.parametrize("name", CONFIGS)
def test_attention_blocks_and_hint_indices_follow_the_unet(name: str) -> None:
    cfg = CONFIGS[name]
    blocks = attention_blocks(cfg)
    assert [b.path for b in blocks] == list(ATTENTION_BLOCK_ORDER)
    assert [b.index for b in blocks] == list(range(16))
    assert blocks[0].key == ("input", 1) and blocks[6].key == ("middle", 0) and blocks[7].key == ("output", 3)
    unet = DualCondUNet(cfg, device="meta")
    assert hint_block_indices(cfg) == unet.hint_indices == [0, 3, 6, 9, 11]
    assert [unet.attention_blocks()[b.index] is unet.get_submodule(b.path) for b in blocks] == [True] * 16


@pytest.mark.parametrize("version", ["mult", "switch", "v2"])
def test_unet_keys_split_into_host_unet_and_colorizer_additions(version: str) -> None:
    cfg = tiny_config(version)
    ckpt, _ = build_tiny_state_dicts(cfg)
    parts = split_checkpoint(ckpt)
    with torch.device("meta"):
        additions = tuple(get_family(version).unet_additions(cfg, parts))
    assert set(additions) == {"mult": set(), "switch": set(), "v2": {"warp_modules", "style_modules"}}[version]
    base, extra = split_unet_state_dict(parts["unet"], additions)
    assert set(base) == set(DualCondUNet(cfg.unet, device="meta").state_dict())  # exactly the SD2.1 U-Net
    assert all(".lora_" in k or k.startswith(("warp_modules.", "style_modules.")) for k in extra)
    n_lora = len(lora_shapes(extra))
    assert n_lora == {"mult": 0, "switch": 16, "v2": 9}[version]  # v2: decoder blocks only
    assert {k.split(".")[0] for k in extra if ".lora_" not in k} == set(additions)


def test_read_native_checkpoint_keeps_every_tensor(tiny_files: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    for version, path in tiny_files.items():
        ck = read_native_checkpoint(path)
        sd = load_file(str(path))
        assert ck.config.version == version
        for k, v in ck.unet.items():
            assert torch.equal(v, sd["model.diffusion_model." + k])
        enc = ck.extras.sketch_encoder.state_dict()
        assert all(torch.equal(v, sd["control_encoder." + k]) for k, v in enc.items())
        assert set(ck.encoders) == {"mult": set(), "switch": {"thresh_embedder", "transformer"},
                                    "v2": {"bg_encoder", "style_encoder"}}[version]
        if version == "switch":
            lora = ck.extras.lora_for("input_blocks.1.1.transformer_blocks.0.attn2")
            key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_up_bg.weight"
            assert torch.equal(lora.to_k.lora_up_bg.weight, sd[key])  # type: ignore[union-attr]


def _random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    return module


def _host_call(attn: CrossAttention, x: torch.Tensor, context: torch.Tensor, site: AttentionSite,
               lora: AttentionLora | None = None, scale: float = 1.0) -> AttentionCall:
    """The call a host makes: its own ``q, k, v`` projections (here the layer's weights), its own SDPA kernel,
    the raw inputs for the LoRA deltas, the bridge's LoRA module; ``to_out`` is applied by the host."""
    heads = attn.heads
    return AttentionCall(x, context, site, q=attn.to_q(x), k=attn.to_k(context), v=attn.to_v(context),
                         attend=lambda q, k, v: attend_heads(q, k, v, heads), scale=scale, lora=lora)


def _split_layer(dim: int, ctx_dim: int, heads: int, has_lora: bool, seed: int) -> CrossAttention:
    """A v1.5/v2 ``attn2`` as the library's U-Net builds it (fg/bg LoRA ranks 2 and 3, or none)."""
    block = SpatialTransformer(32, heads, dim // heads, ctx_dim, 1, 0)  # 32 channels (GroupNorm), attention width dim
    add_split_lora(block, ctx_dim, (2, 3) if has_lora else None)
    return _random_(block.transformer_blocks[0].attn2, seed)


def _bridge_lora(attn: CrossAttention) -> AttentionLora:
    """The bridge's copy of the layer's LoRA pairs (:class:`colorize.native.NativeExtras` holds these)."""
    shapes = {p: (getattr(attn, p).in_features, getattr(attn, p).out_features, 2, 3) for p in ("to_q", "to_k", "to_v")}
    lora = AttentionLora(shapes)
    lora.load_state_dict({k: v for k, v in attn.state_dict().items() if ".lora_" in k})
    return lora


@pytest.mark.parametrize("has_lora", [True, False])
@pytest.mark.parametrize("flags", [(False, False), (True, False), (True, True)])
def test_split_attention_on_host_projections_equals_the_unet_split_path(has_lora: bool,
                                                                         flags: tuple[bool, bool]) -> None:
    heads, dim, ctx_dim, n = 2, 16, 12, 5
    attn = _split_layer(dim, ctx_dim, heads, has_lora, 0)
    assert (attn.lora is not None) == has_lora
    lora = _bridge_lora(attn) if has_lora else None
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(4, 9, dim, generator=g), torch.randn(4, 2 * n, ctx_dim, generator=g)
    mask = torch.rand(4, 1, 3, 3, generator=g)  # the latent mask on this block's 3x3 token grid
    mask[0, 0, 0] = 0.4  # tokens 0..2 exactly at the threshold: the tie rule differs with and without LoRA
    options = SplitOptions(mask, threshold=0.4, fg_scale=1.3, bg_scale=0.7, merge_scale=0.2,
                           use_fg_lora=flags[0], use_bg_lora=flags[1], lora_scale=0.8)
    site = AttentionSite(0, 0, True, (3, 3))
    # the library's U-Net path: the layer with the split processor and the block's reference strength 0.9
    want = attn(x, context, AttentionPatches(cross_attention=SplitAttention(options), reference_scales=[0.9]), site)
    out = SplitAttention(options)(_host_call(attn, x, context, site, lora, scale=0.9))
    torch.testing.assert_close(attn.to_out(out), want, rtol=1e-5, atol=1e-6)


def test_plain_attention_on_host_projections_equals_cross_attention_with_a_reference_scale() -> None:
    attn = _random_(CrossAttention(16, 12, 4, 4), 2)
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 7, 16, generator=g), torch.randn(2, 5, 12, generator=g)
    site = AttentionSite(0, 0, True, (7, 1))
    want = attn(x, ctx, AttentionPatches(reference_scales=[0.6]), site)
    out = plain_attention(_host_call(attn, x, ctx, site, scale=0.6))
    torch.testing.assert_close(attn.to_out(out), want, rtol=1e-5, atol=1e-6)
    # the same through the per-call patches, as the bridge's attention patch hands them the host's call
    out = AttentionPatches(reference_scales=[0.6])(_host_call(attn, x, ctx, site))
    torch.testing.assert_close(attn.to_out(out), want, rtol=1e-5, atol=1e-6)


def test_token_grid_recovers_the_grid_the_split_mask_is_resized_to() -> None:
    """A host that hands over only the token count: the grid :func:`token_grid` recovers gives the split
    processor the mask tokens of the block's true grid (bicubic-resized latent mask, tiled over the model
    batch) and so the same result as the library's U-Net, which passes that grid itself."""
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(2, 1, 12, 10, generator=g)
    tokens_of = MaskTokens(mask)
    options = SplitOptions(mask, threshold=0.5)
    attn = _split_layer(16, 12, 2, False, 5)
    for true_grid in ((12, 10), (6, 5), (3, 3), (2, 2)):  # each Downsample halves a side, rounding up
        tokens = true_grid[0] * true_grid[1]
        h, w = token_grid(tokens, 12, 10)
        assert (h, w) == true_grid
        want = mask if (h, w) == (12, 10) else F.interpolate(mask, size=(h, w), mode="bicubic", align_corners=False)
        want = want.flatten(2).transpose(1, 2).repeat(3, 1, 1)  # (6, h·w, 1): the mask tiled over 6 rows
        torch.testing.assert_close(tokens_of((h, w), 6, mask.device), want)
        x, ctx = torch.randn(6, tokens, 16, generator=g), torch.randn(6, 8, 12, generator=g)
        unet_path = attn(x, ctx, AttentionPatches(cross_attention=SplitAttention(options)),
                         AttentionSite(0, 0, True, true_grid))
        host = SplitAttention(options)(_host_call(attn, x, ctx, AttentionSite(0, 0, True, (h, w))))
        torch.testing.assert_close(attn.to_out(host), unet_path, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        token_grid(7, 12, 10)


@torch.no_grad()
def test_warp_skip_equals_the_v2_unet_decoder_warp() -> None:
    """The bridge replaces each decoder skip by ``warp_skip`` of it (its ``output_block_patch``: the latent mask
    as tokens of the skip's grid, the per-image background tokens tiled over the CFG batch); a plain U-Net
    pass patched that way equals the v2 U-Net's own warped decoder."""
    cfg = tiny_config("v2")
    unet = _random_(V2UNet(cfg.unet, warp_dim_head=16), 5).eval()
    g = torch.Generator().manual_seed(6)
    x, t = torch.randn(4, 4, 16, 16, generator=g), torch.tensor([500.0, 500.0, 20.0, 20.0])
    ctx = torch.randn(4, 8, cfg.unet.context_dim, generator=g)
    mask = torch.rand(2, 1, 16, 16, generator=g)
    hs_bg = [torch.randn(2, 6, c, generator=g) for c in decoder_skip_channels(cfg.unet)]
    want = unet(x, t, ctx, hs_bg=hs_bg, warp_mask=mask, warp_threshold=0.3)

    masks = MaskTokens(mask)

    def bridge_warp(i: int, c: int):  # type: ignore[no-untyped-def]
        def hook(module, args):  # type: ignore[no-untyped-def]
            h, skip = args[0][:, :-c], args[0][:, -c:]
            tokens = masks(tuple(skip.shape[-2:]), skip.shape[0], skip.device)
            return (torch.cat([h, warp_skip(unet.warp_modules[i], skip, hs_bg[i], tokens, 0.3)], 1), *args[1:])
        return hook

    hooks = [block.register_forward_pre_hook(bridge_warp(i, c))
             for i, (block, c) in enumerate(zip(unet.output_blocks, decoder_skip_channels(cfg.unet)))]
    try:
        got = unet(x, t, ctx)
    finally:
        for hk in hooks:
            hk.remove()
    torch.testing.assert_close(got, want)
    assert (unet(x, t, ctx) - want).abs().max() > 1e-4  # the warp acts, so the test can fail


def test_chunk_hints_pick_the_blank_sketch_only_for_sketch_unconditional_chunks() -> None:
    hints, blank = [torch.ones(1, 2, 3, 3)], [torch.zeros(1, 2, 3, 3)]
    out = chunk_hints(hints, blank, [False, True, False], chunk=2)[0]
    assert out.shape == (6, 2, 3, 3)
    assert out[:2].eq(1).all() and out[2:4].eq(0).all() and out[4:].eq(1).all()
    with pytest.raises(ValueError):
        chunk_hints([torch.ones(3, 2, 3, 3)], [torch.zeros(3, 2, 3, 3)], [False], chunk=2)


def test_xl_host_unet_config_is_comfyuis_sdxl_with_the_xl_adm_width() -> None:
    """The full-size XL U-Net in ComfyUI's SDXL parameters (its model detection values), adm input 512."""
    from colorize.families.xl.unet import XL_UNET

    cfg = host_unet_config(XL_UNET)
    assert cfg["transformer_depth"] == [0, 0, 2, 2, 10, 10] and cfg["transformer_depth_middle"] == 10
    assert cfg["transformer_depth_output"] == [0, 0, 0, 2, 2, 2, 10, 10, 10]
    assert cfg["use_linear_in_transformer"] is True and cfg["context_dim"] == 2048
    assert cfg["adm_in_channels"] == 512 and cfg["num_classes"] == "sequential"
    blocks = attention_blocks(XL_UNET)
    assert [b.index for b in blocks] == [0, 2, 4, 14, 24, 34, 44, 54, 64, 66, 68]  # first transformer block each
    assert sum(b.depth for b in blocks) == 70 and hint_block_indices(XL_UNET) == [0, 3, 6, 8]


@pytest.mark.parametrize("version", ["sdxl", "xlv2"])
def test_read_native_xl_checkpoint(tmp_path: Path, version: str) -> None:
    """The host U-Net keys are exactly the XL U-Net's (xlv2's background LoRA and conv_fg stay out: the native
    path is its plain one); the multi-scale sketch encoder rides beside it; a parameterisation can be forced."""
    from colorize.families.xl.sketch_encoder import MultiScaleAttentionEncoder
    from colorize.families.xl.unet import build_xl_unet

    path = write_tiny_weights(tmp_path, versions=(version,))[CHECKPOINT_NAMES[version]]
    ck = read_native_checkpoint(path)
    assert set(ck.unet) == set(build_xl_unet(tiny_config(version).unet, device="meta").state_dict())
    assert isinstance(ck.extras.sketch_encoder, MultiScaleAttentionEncoder) and "proj" in ck.encoders
    assert ck.config.parameterization == "v" and read_native_checkpoint(path, "eps").config.parameterization == "eps"
