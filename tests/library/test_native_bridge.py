"""The host bridge's library part (``colorize.native``), without ComfyUI: the SD2.1 layout a host builds, the
split of a checkpoint into host U-Net / colorizer modules, and the per-step math against the library's modules."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from colorize.config import TINY_MULT, UNetConfig
from colorize.models.attention import CrossAttention
from colorize.models.split_attention import (
    BlockSplit,
    SplitContext,
    SplitCrossAttention,
    SplitOptions,
)
from colorize.models.unet import ATTENTION_BLOCK_ORDER
from colorize.models.unet import DualCondUNet
from colorize.families.v2.unet import V2UNet
from colorize.native import (
    AttentionLora,
    attend_heads,
    attention_blocks,
    chunk_hints,
    hint_block_indices,
    host_unet_config,
    mask_tokens,
    read_native_checkpoint,
    scaled_attention,
    split_attention,
    split_unet_state_dict,
    token_grid,
    warp_skip,
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
    return {v: paths[n] for v, n in CHECKPOINT_NAMES.items()}


def test_host_unet_config_is_sd21_with_conv_projections() -> None:
    cfg = host_unet_config(UNetConfig())
    # ComfyUI's SD2.1 detection values (host notes §4), except the released 1x1-conv proj_in/out
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
    prefix = "model.diffusion_model."
    base, extra = split_unet_state_dict({k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)})
    assert set(base) == set(DualCondUNet(cfg.unet, device="meta").state_dict())  # exactly the SD2.1 U-Net
    assert all(".lora_" in k or k.startswith(("warp_modules.", "style_modules.")) for k in extra)
    n_lora = len(lora_shapes(extra))
    assert n_lora == {"mult": 0, "switch": 16, "v2": 9}[version]  # v2: decoder blocks only
    assert any(k.startswith("warp_modules.") for k in extra) == (version == "v2")


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


@pytest.mark.parametrize("has_lora", [True, False])
@pytest.mark.parametrize("flags", [(False, False), (True, False), (True, True)])
def test_split_attention_from_projections_equals_split_cross_attention(has_lora: bool, flags: tuple[bool, bool]) -> None:
    heads, dim, ctx_dim, n = 2, 16, 12, 5
    attn = _random_(SplitCrossAttention(dim, ctx_dim, heads, dim // heads, (2, 3) if has_lora else None), 0)
    lora = None
    if has_lora:
        shapes = {p: (getattr(attn, p).in_features, dim, 2, 3) for p in ("to_q", "to_k", "to_v")}
        lora = AttentionLora(shapes)
        lora.load_state_dict({k: v for k, v in attn.state_dict().items() if ".lora_" in k})
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(4, 9, dim, generator=g), torch.randn(4, 2 * n, ctx_dim, generator=g)
    mask = torch.rand(4, 9, 1, generator=g)
    mask[0, :3] = 0.4  # exactly at the threshold: the tie rule differs with and without LoRA
    options = SplitOptions(torch.zeros(1), threshold=0.4, fg_scale=1.3, bg_scale=0.7, merge_scale=0.2,
                           use_fg_lora=flags[0], use_bg_lora=flags[1], lora_scale=0.8)
    want = attn(x, BlockSplit(context[:, :n], context[:, n:], mask, options), 0.9)
    out = split_attention(attn.to_q(x), attn.to_k(context), attn.to_v(context), x=x, context=context, mask=mask,
                          options=options, scale=0.9, lora=lora, attend=lambda q, k, v: attend_heads(q, k, v, heads))
    torch.testing.assert_close(attn.to_out(out), want, rtol=1e-5, atol=1e-6)


def test_scaled_attention_equals_cross_attention_with_a_reference_scale() -> None:
    attn = _random_(CrossAttention(16, 12, 4, 4), 2)
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 7, 16, generator=g), torch.randn(2, 5, 12, generator=g)
    out = scaled_attention(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), 0.6, lambda q, k, v: attend_heads(q, k, v, 4))
    torch.testing.assert_close(attn.to_out(out), attn(x, ctx, 0.6), rtol=1e-5, atol=1e-6)


def test_mask_tokens_and_token_grid_match_split_context() -> None:
    mask = torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(4))
    ctx = SplitContext(torch.zeros(6, 8, 3), SplitOptions(mask))
    for tokens in (120, 30, 9, 4):
        h, w = token_grid(tokens, 12, 10)
        assert h * w == tokens
        torch.testing.assert_close(mask_tokens(mask, h, w, 6), ctx.mask_tokens(h, w))
    with pytest.raises(ValueError):
        token_grid(7, 12, 10)


def test_warp_skip_equals_the_v2_unet_decoder_warp() -> None:
    cfg = tiny_config("v2")
    unet = _random_(V2UNet(cfg.unet, warp_dim_head=16), 5)
    g = torch.Generator().manual_seed(6)
    skip, bg = torch.randn(4, 64, 4, 4, generator=g), torch.randn(2, 16, 64, generator=g)
    mask = torch.rand(2, 1, 16, 16, generator=g)
    ctx = SplitContext(torch.zeros(4, 8, 64), SplitOptions(mask))
    want = unet._warp(2, skip, bg.repeat(2, 1, 1), ctx, 0.3)
    got = warp_skip(unet.warp_modules[2], skip, bg, mask_tokens(mask, 4, 4, 4), 0.3)
    torch.testing.assert_close(got, want)


def test_chunk_hints_pick_the_blank_sketch_only_for_sketch_unconditional_chunks() -> None:
    hints, blank = [torch.ones(1, 2, 3, 3)], [torch.zeros(1, 2, 3, 3)]
    out = chunk_hints(hints, blank, [False, True, False], chunk=2)[0]
    assert out.shape == (6, 2, 3, 3)
    assert out[:2].eq(1).all() and out[2:4].eq(0).all() and out[4:].eq(1).all()
    with pytest.raises(ValueError):
        chunk_hints([torch.ones(3, 2, 3, 3)], [torch.zeros(3, 2, 3, 3)], [False], chunk=2)
