"""The xlv2 background encoder (ReferenceNet), its bank and the xlv2 attention processors.

Official facts: tellurion-kanata/ColorizeDiffusionXL at commit ec78784 (``refnet/modules/unet.py:403``,
``refnet/sampling/hook.py:30-129``, ``refnet/modules/attention.py:19-30, 151-185``, ``refnet/modules/lora.py:26-55``,
``refnet/models/v2-colorizerXL.py:212-338``, ``refnet/util.py:101-110``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _helpers import kind_result
from _helpers import randomize as _randomize
from _helpers import state_shapes as _shapes

from colorize.families.xl import blocks as xl_blocks
from colorize.families.xl.bank import (
    BankSelfAttention,
    ReferenceBank,
    bank_attention,
    xlv2_patches,
)
from colorize.families.xl.reference_net import (
    ReferenceNet,
    build_reference_net,
    build_xlv2_unet,
    crop_scale,
    latent_mask,
    reference_adm,
    reference_net_config,
    reference_net_input,
)
from colorize.families.xl.unet import TINY_XL_UNET, adm_vector
from colorize.models.attention import AttentionCall, AttentionPatches, AttentionSite, CrossAttention
from colorize.models.unet import timestep_embedding

# Small and quick: 3 levels, attention at ds 2 and 4, depths (1, 1, 2) → 9 decoder transformer blocks.
SMALL = replace(TINY_XL_UNET, transformer_depth=(1, 1, 2), transformer_depth_middle=1, context_dim=16)


# --- full-size layouts ------------------------------------------------------------------------------------------


def _official(layout_dir: Path, prefix: str) -> dict[str, list[int]]:
    path = layout_dir / "keys_xl_xlv2.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return {k: list(v) for k, v in json.loads(path.read_text()).items() if k.startswith(prefix)}


def test_full_size_reference_net_has_the_official_bg_encoder_layout(layout_dir: Path) -> None:
    net = build_reference_net(device="meta")
    assert _shapes(net, "bg_encoder.") == _official(layout_dir, "bg_encoder.")
    assert sum(v.numel() for v in net.state_dict().values()) == 2_012_561_920  # official meta-device count
    assert net.bank_indices == tuple(range(34, 70))  # the U-Net decoder blocks that read the banks
    assert not hasattr(net, "out")


def test_full_size_xlv2_unet_has_the_official_layout(layout_dir: Path) -> None:
    unet = build_xlv2_unet(device="meta")
    assert _shapes(unet, "model.diffusion_model.") == _official(layout_dir, "model.diffusion_model.")


def test_reference_net_config_is_derived_from_the_unet_config() -> None:
    cfg = reference_net_config(SMALL)
    assert (cfg.in_channels, cfg.adm_in_channels) == (6, 1024)
    assert replace(cfg, in_channels=SMALL.in_channels, adm_in_channels=SMALL.adm_in_channels) == SMALL


# --- inputs -----------------------------------------------------------------------------------------------------


def test_crop_scale_follows_the_wider_aspect() -> None:
    # output wider than the reference: the full width, part of the height
    assert crop_scale(64, 128, 96, 64) == pytest.approx((64 / 128 * 64 / 96, 1.0))
    # output taller than the reference: the full height, part of the width
    assert crop_scale(128, 64, 64, 96) == pytest.approx((1.0, 64 / 128 * 64 / 96))
    assert crop_scale(100, 100, 50, 50) == (1.0, 1.0)


def test_reference_adm_is_four_sinusoids() -> None:
    y = reference_adm(0.25, 1.0, batch=2)
    assert y.shape == (2, 1024)
    expected = timestep_embedding(torch.tensor([0.0, 0.0, 0.25, 1.0]), 256).reshape(1, -1)
    assert torch.equal(y[:1], expected) and torch.equal(y[0], y[1])


def test_reference_net_input_resizes_the_masks_to_the_latent() -> None:
    z = torch.randn(1, 4, 8, 16)
    smask = torch.rand(1, 1, 48, 96)  # not the output size: bicubic to (64, 128) first
    rmask = (torch.rand(1, 1, 64, 128) > 0.5).float()
    x = reference_net_input(z, smask, rmask, (64, 128))
    assert x.shape == (1, 6, 8, 16)
    assert torch.equal(x[:, :4], z)
    assert torch.equal(x[:, 5:], rmask[:, :, ::8, ::8])  # nearest ×1/8 of an (H, W) mask
    assert torch.equal(latent_mask(rmask), rmask[:, :, ::8, ::8])


# --- tiny forward -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_models(single_thread):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    unet = build_xlv2_unet(SMALL).eval()
    net = build_reference_net(reference_net_config(SMALL)).eval()
    _randomize(unet, 1)
    _randomize(net, 2)
    return unet, net


def _bank(net: ReferenceNet, h: int = 8, w: int = 16) -> ReferenceBank:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, h, w, generator=g)
    smask = torch.rand(1, 1, 8 * h, 8 * w, generator=g)
    rmask = (torch.rand(1, 1, 8 * h, 8 * w, generator=g) > 0.5).float()
    with torch.no_grad():
        return net(reference_net_input(z, smask, rmask, (8 * h, 8 * w)), torch.zeros(1), reference_adm(0.5, 1.0))


def test_reference_net_bank_shapes_follow_the_config(small_models) -> None:  # type: ignore[no-untyped-def]
    unet, net = small_models
    groups = xl_blocks.block_groups(SMALL)
    assert net.bank_indices == groups.decoder
    bank = _bank(net)
    assert bank.indices == groups.decoder and len(bank) == 9
    for info, tokens in zip((groups.blocks[i] for i in bank.indices), bank.ordered()):
        width = SMALL.model_channels * SMALL.channel_mult[info.level]
        assert tokens.shape == (1, (8 // info.ds) * (16 // info.ds), width)


def _inputs(unet, b: int = 1):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3 * b, 4, 8, 16, generator=g)
    t = torch.full((3 * b,), 500.0)
    ctx = torch.randn(3 * b, 12, SMALL.context_dim, generator=g)
    mask = torch.zeros(b, 1, 8, 16)
    mask[..., 4:12] = torch.rand(b, 1, 8, 8, generator=g)  # a soft character in the middle, background around it
    hints = [torch.randn(3 * b, SMALL.model_channels * m, 8 // s, 16 // s, generator=g)
             for m, s in ((1, 1), (1, 2), (2, 4), (1, 4))]
    return x, t, ctx, mask, hints, adm_vector(64, 128, 3 * b)


def test_no_state_survives_between_calls(small_models) -> None:  # type: ignore[no-untyped-def]
    unet, net = small_models
    x, t, ctx, mask, hints, y = _inputs(unet)
    scales = xl_blocks.xlv2_reference_scales(xl_blocks.block_groups(SMALL), {"encoder": 0.8, "middle": 0.7,
                                                                              "low": 0.6})
    weights = {k: v.clone() for k, v in unet.state_dict().items()}

    def masked(model, bank_net):  # type: ignore[no-untyped-def]
        return model(x, t, ctx, hints, xlv2_patches(_bank(bank_net), mask, scales), y=y)

    def unmasked(model, bank_net):  # type: ignore[no-untyped-def]
        return model(x, t, ctx[:, :6], hints, AttentionPatches(reference_scales=scales), y=y)

    with torch.no_grad():
        sequence = [masked(unet, net), unmasked(unet, net), masked(unet, net)]
        alone = [case(copy.deepcopy(unet), copy.deepcopy(net)) for case in (masked, unmasked, masked)]
    for got, fresh in zip(sequence, alone):
        assert torch.equal(got, fresh)
    assert torch.equal(sequence[0], sequence[2])
    assert not torch.equal(sequence[0], sequence[1])
    after = unet.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], v) for k, v in weights.items())


def test_the_bank_and_the_lora_change_the_prediction(small_models) -> None:  # type: ignore[no-untyped-def]
    unet, net = small_models
    x, t, ctx, mask, hints, y = _inputs(unet)
    bank = _bank(net)
    with torch.no_grad():
        app = unet(x, t, ctx, hints, xlv2_patches(bank, mask), y=y)
        no_bank = unet(x, t, ctx, hints, xlv2_patches(None, mask), y=y)
        no_lora = unet(x, t, ctx, hints, xlv2_patches(bank, mask, use_lora=False), y=y)
        delta = unet(x, t, ctx, hints, xlv2_patches(bank, mask, lora="delta"), y=y)
    assert app.shape == x.shape
    assert (app - no_bank).abs().max() > 1e-3
    assert (app - no_lora).abs().max() > 1e-3
    torch.testing.assert_close(delta, app, rtol=0, atol=1e-4)  # merged weights = the added LoRA up to rounding


# --- the bank self-attention ------------------------------------------------------------------------------------


def _layer() -> CrossAttention:
    torch.manual_seed(5)
    return CrossAttention(32, None, heads=2, dim_head=16).eval()


def test_bank_bias_foreground_sees_own_tokens_background_only_the_bank() -> None:
    layer = _layer()
    x, bank = torch.randn(2, 8, 32), torch.randn(1, 8, 32)
    site = AttentionSite(40, 0, False, (2, 4))
    call = AttentionCall(x, x, site, layer=layer)
    fg = bank_attention(call, bank, torch.ones(2, 8, 1))
    bg = bank_attention(call, bank, torch.zeros(2, 8, 1))
    with torch.no_grad():
        own = layer(x)
        only_bank = layer.to_out(layer.attend(layer.to_q(x), layer.to_k(bank.expand(2, -1, -1)),
                                              layer.to_v(bank.expand(2, -1, -1))))
    torch.testing.assert_close(fg, own, rtol=0, atol=1e-6)
    torch.testing.assert_close(bg, only_bank, rtol=0, atol=1e-6)
    # the threshold stays attn1's 0.05 unless asked: a mask of 0.04 is background, 0.06 foreground
    torch.testing.assert_close(bank_attention(call, bank, torch.full((2, 8, 1), 0.06)), own, rtol=0, atol=1e-6)
    torch.testing.assert_close(bank_attention(call, bank, torch.full((2, 8, 1), 0.04)), only_bank, rtol=0,
                               atol=1e-6)


def test_bank_self_attention_reads_only_blocks_with_a_bank() -> None:
    layer = _layer()
    x = torch.randn(1, 8, 32)
    processor = BankSelfAttention(ReferenceBank({40: torch.randn(1, 8, 32)}), torch.zeros(1, 1, 4, 8))
    with torch.no_grad():
        other = processor(AttentionCall(x, x, AttentionSite(12, 0, False, (2, 4)), layer=layer))
        read = processor(AttentionCall(x, x, AttentionSite(40, 0, False, (2, 4)), layer=layer))
        assert torch.equal(other, layer(x))
        assert not torch.allclose(read, layer(x))


def test_bank_attention_refuses_what_it_cannot_compute() -> None:
    layer = _layer()
    x = torch.randn(1, 8, 32)
    call = AttentionCall(x, x, AttentionSite(40, 0, False, (2, 4)), layer=layer)
    with pytest.raises(ValueError, match="as many tokens"):
        bank_attention(call, torch.randn(1, 6, 32), torch.ones(1, 8, 1))
    host = AttentionCall(x, x, call.site, q=x, k=x, v=x, attend=layer.attend)
    with pytest.raises(ValueError, match="projections"):
        bank_attention(host, torch.randn(1, 8, 32), None)


# --- golden fixture ---------------------------------------------------------------------------------------------


def test_xlv2_reference_net_fixture_parity() -> None:
    res = kind_result("xlv2_reference_net")
    bad = {k: v for k, v in res.per_output.items() if not v[2]}
    assert res.passed and not bad, (res.error, bad)
