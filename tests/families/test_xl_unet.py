"""The ColorizeDiffusion XL U-Net (the shared DualCondUNet with the SDXL config fields), its block groups and
per-level reference strengths, and the sdxl fg/bg cross-attention processor.

Official facts: tellurion-kanata/ColorizeDiffusionXL at commit ec78784 (``refnet/modules/unet.py:364``,
``refnet/models/colorizerXL.py:42-69``, ``refnet/models/basemodel.py:188-212, 281-294``,
``refnet/modules/attention.py:19-30, 151-185``).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from colorize.config import UNetConfig
from colorize.families.xl import blocks as xl_blocks
from colorize.families.xl.split_attention import (
    XLSplitAttention,
    XLSplitOptions,
    create_masked_attention_bias,
)
from colorize.families.xl.unet import TINY_XL_UNET, XL_UNET, adm_vector, build_xl_unet, xl_unet_config
from colorize.models.attention import AttentionPatches, AttentionSite, CrossAttention
from colorize.models.unet import DualCondUNet, timestep_embedding

UNET = "model.diffusion_model."

# The official hard-coded 70-block lists (colorizerXL.py:42-65): high 0-3 and 64-69, low 4-23 and 34-63,
# bottom 24-33, encoder 0-23, decoder 34-69; mask scale 0.5 for the high blocks, 0.25 otherwise.
OFFICIAL_GROUPS = {
    "high": [*range(0, 4), *range(64, 70)],
    "low": [*range(4, 24), *range(34, 64)],
    "bottom": list(range(24, 34)),
    "encoder": list(range(0, 24)),
    "decoder": list(range(34, 70)),
}
OFFICIAL_SCALE_FACTORS = [0.5 if i in OFFICIAL_GROUPS["high"] else 0.25 for i in range(70)]


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, list[int]]:
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def test_full_size_meta_build_has_the_official_keys_and_shapes(layout_dir: Path) -> None:
    path = layout_dir / "keys_xl_sdxl.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    official = json.loads(path.read_text())
    expected = {k: list(v) for k, v in official.items() if k.startswith(UNET)}
    unet = build_xl_unet(device="meta")
    assert _shapes(unet, UNET) == expected
    assert sum(v.numel() for v in unet.state_dict().values()) == 2_564_514_564  # official meta-device count
    assert unet.num_attention_blocks == 70
    assert unet.hint_indices == [0, 3, 6, 8]


def test_full_size_groups_equal_the_official_lists() -> None:
    groups = xl_blocks.block_groups(XL_UNET)
    assert groups.count == 70
    assert groups.as_dict() == OFFICIAL_GROUPS
    assert list(groups.scale_factors) == OFFICIAL_SCALE_FACTORS
    assert xl_blocks.block_groups(TINY_XL_UNET).as_dict() == OFFICIAL_GROUPS


def test_groups_follow_a_smaller_config() -> None:
    cfg = replace(TINY_XL_UNET, transformer_depth=(1, 1, 2), transformer_depth_middle=None)
    groups = xl_blocks.block_groups(cfg)
    # encoder: 2 (level 1) + 4 (level 2); middle 2; decoder: 6 (level 2) + 3 (level 1)
    assert groups.count == 17 == DualCondUNet(cfg, device="meta").num_attention_blocks
    assert groups.high == (0, 1, 14, 15, 16)
    assert groups.bottom == (6, 7)
    assert groups.encoder == tuple(range(6)) and groups.decoder == tuple(range(8, 17))
    assert groups.low == (2, 3, 4, 5, *range(8, 14))


def test_the_unet_sites_follow_the_block_order() -> None:
    """Each transformer block hands its own index to the processors (70 reference strengths)."""
    seen: dict[int, tuple[int, int]] = {}

    def record(call):  # type: ignore[no-untyped-def]
        seen[call.site.index] = call.site.grid
        return call.output(call.attend(call.query(), call.key(), call.value()))

    unet = build_xl_unet(TINY_XL_UNET).eval()
    x = torch.randn(1, 4, 8, 12)
    with torch.no_grad():
        unet(x, torch.tensor([500.0]), torch.randn(1, 4, 32), None, AttentionPatches(cross_attention=record),
             y=adm_vector(64, 96))
    assert sorted(seen) == list(range(70))
    factors = xl_blocks.block_groups(TINY_XL_UNET).scale_factors
    assert all(seen[i] == (round(8 * f), round(12 * f)) for i, f in enumerate(factors))


def test_tiny_forward_shapes_and_hints() -> None:
    torch.manual_seed(0)
    unet = build_xl_unet(TINY_XL_UNET).eval()
    x = torch.randn(2, 4, 8, 12)
    hints = [torch.randn(2, 32, 8, 12), torch.randn(2, 32, 4, 6), torch.randn(2, 64, 2, 3),
             torch.randn(2, 32, 2, 3)]
    y = adm_vector(64, 96, 2)
    with torch.no_grad():
        out = unet(x, torch.tensor([999.0, 10.0]), torch.randn(2, 6, 32), hints, y=y)
        out1 = unet(x, torch.tensor([999.0, 10.0]), torch.randn(2, 6, 32), hints, y=y[:1])
    assert out.shape == x.shape and out1.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="adm vector"):
        unet(x, torch.tensor([1.0]), None)
    with pytest.raises(ValueError, match="no adm input"):
        DualCondUNet(UNetConfig(model_channels=32, channel_mult=(1, 1, 1, 2), num_head_channels=16,
                                context_dim=64))(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), None, y=y)


def test_adm_vector_is_two_sinusoids() -> None:
    y = adm_vector(1024, 768, 3)
    assert y.shape == (3, 512)
    expected = timestep_embedding(torch.tensor([math.sqrt(1024 * 768), 7.0]), 256).reshape(1, 512)
    assert torch.equal(y, expected.expand(3, -1))


def test_sd21_config_keeps_its_meaning() -> None:
    cfg = UNetConfig()
    assert cfg.level_depth(0) == cfg.level_depth(-1) == 1
    unet = DualCondUNet(cfg, device="meta")
    assert unet.hint_indices == [0, 3, 6, 9, 11] and unet.num_attention_blocks == 16
    assert not hasattr(unet, "label_emb")
    assert xl_unet_config(model_channels=32).model_channels == 32


def test_reference_strength_rules() -> None:
    groups = xl_blocks.block_groups(XL_UNET)
    scales = {"encoder": 0.8, "middle": 0.6, "low": 0.4}
    assert xl_blocks.sdxl_reference_scales(groups, scales, strength=0.5) == [0.4] * 70
    levels = xl_blocks.sdxl_reference_scales(groups, scales, rule="levels")
    assert [levels[i] for i in OFFICIAL_GROUPS["high"]] == [0.8] * 10
    assert [levels[i] for i in OFFICIAL_GROUPS["bottom"]] == [0.6] * 10
    assert [levels[i] for i in OFFICIAL_GROUPS["low"]] == [0.4] * 50
    v2 = xl_blocks.xlv2_reference_scales(groups, scales, previous=[2.0] * 70)
    assert v2[:4] == [0.8] * 4 and v2[4:24] == [0.4] * 20 and v2[34:64] == [0.4] * 30
    assert v2[24:34] == [2.0] * 10 and v2[64:] == [2.0] * 6  # untouched by the official rule
    per_block = [i / 70 for i in range(70)]
    assert xl_blocks.sdxl_reference_scales(groups, per_block, level_control=False) == per_block
    with pytest.raises(ValueError, match="70"):
        xl_blocks.sdxl_reference_scales(groups, [1.0] * 16, level_control=False)


def test_bias_pattern_and_its_padding() -> None:
    tokens = torch.tensor([[[0.9], [0.1]]])
    bias = create_masked_attention_bias(tokens, 0.5, 2, 6)
    assert bias.shape == (1, 2, 2, 8)
    hidden = bias.isinf()[0, 0].int().tolist()
    assert hidden == [[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]]


def test_bias_path_selects_one_half_per_query() -> None:
    torch.manual_seed(1)
    layer = CrossAttention(16, 8, 2, 8).eval()
    x, context = torch.randn(2, 12, 16), torch.randn(2, 10, 8)
    mask = torch.rand(2, 1, 3, 4)
    site = AttentionSite(0, 0, True, (3, 4))
    opts = XLSplitOptions(mask=mask, threshold=0.5, fg_scale=3.0, bg_scale=0.1)
    patches = AttentionPatches(cross_attention=XLSplitAttention(opts), reference_scales=[0.7])
    with torch.no_grad():
        got = layer(x, context, patches, site)
        fg = layer(x, context[:, :5], AttentionPatches(reference_scales=[0.7]), site)
        bg = layer(x, context[:, 5:], AttentionPatches(reference_scales=[0.7]), site)
    is_fg = (mask.flatten(2).transpose(1, 2) > 0.5)
    torch.testing.assert_close(got, torch.where(is_fg, fg, bg), atol=1e-5, rtol=0)
    strict = AttentionPatches(cross_attention=XLSplitAttention(replace(opts, official_padding=True)))
    with pytest.raises(ValueError, match="multiple of 8"):
        layer(x, context, strict, site)
