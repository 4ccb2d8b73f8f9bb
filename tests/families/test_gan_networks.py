"""Tests of the chapter-4 GAN networks and losses (thesis §4.2.1-§4.2.2, Table 4.1, Eq. 4.1-4.6).

Every expected value is recomputed here by an explicit formula (einsum / softmax / loops / closed forms), never
by calling the code under test a second time.
"""
from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F

from colorize.families.gan.losses import (
    GANLossWeights,
    discriminator_loss,
    focal_alpha_from_counts,
    focal_loss,
    generator_adversarial_loss,
    generator_total_loss,
    l1_loss,
    multilabel_bce_loss,
    total_variation_loss,
)
from colorize.families.gan.networks import (
    TINY_GAN,
    ColorizationGenerator,
    GANConfig,
    PatchDiscriminator,
    PixelShuffleUpsample,
    ReceivingBlock,
    ReferenceChannelAttention,
    ReferenceTagEncoder,
    SpatialAttention,
)

# ----------------------------------------------------------------------------------------------- RBCA / attention


def test_rbca_matches_se_formula_on_reference_statistics():
    torch.manual_seed(0)
    rbca = ReferenceChannelAttention(channels=3, reference_channels=4, reduction=2)  # hidden = 2
    w1, b1 = rbca.squeeze.weight.detach(), rbca.squeeze.bias.detach()
    w2, b2 = rbca.excite.weight.detach(), rbca.excite.bias.detach()
    x = torch.randn(2, 3, 5, 6)
    ref = torch.rand(2, 4, 3, 3)
    g = ref.sum(dim=(2, 3)) / 9.0  # global average pooling of the reference, by hand
    hidden = torch.clamp(torch.einsum("hc,bc->bh", w1, g) + b1, min=0)
    s = 1 / (1 + torch.exp(-(torch.einsum("oh,bh->bo", w2, hidden) + b2)))
    expected = x * s[:, :, None, None]
    assert torch.allclose(rbca(x, ref), expected, atol=1e-6)
    # the weights depend on the reference only: another x gets the same per-channel ratio
    x2 = torch.randn(2, 3, 5, 6)
    assert torch.allclose(rbca(x2, ref), x2 * s[:, :, None, None], atol=1e-6)


def test_rbca_known_weights():
    rbca = ReferenceChannelAttention(channels=2, reference_channels=2, reduction=2)  # hidden = 1
    with torch.no_grad():
        rbca.squeeze.weight.copy_(torch.tensor([[1.0, 1.0]]))
        rbca.squeeze.bias.zero_()
        rbca.excite.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        rbca.excite.bias.zero_()
    ref = torch.zeros(1, 2, 2, 2)
    ref[0, 0] = 1.0  # GAP = (1, 0) -> hidden = 1 -> logits (1, -1)
    x = torch.ones(1, 2, 1, 1)
    out = rbca(x, ref).flatten()
    sig = 1 / (1 + math.exp(-1))
    assert out.tolist() == pytest.approx([sig, 1 - sig], abs=1e-6)


def _attention_by_hand(att: SpatialAttention, x, ctx, heads: int, scaled: bool):
    b, c, h, w = x.shape
    wq, bq = att.query.weight.detach()[:, :, 0, 0], att.query.bias.detach()
    wk, bk = att.key.weight.detach()[:, :, 0, 0], att.key.bias.detach()
    wv, bv = att.value.weight.detach()[:, :, 0, 0], att.value.bias.detach()
    q = torch.einsum("dc,bcn->bdn", wq, x.flatten(2)) + bq[:, None]  # B, dk, N
    k = torch.einsum("dc,bcm->bdm", wk, ctx.flatten(2)) + bk[:, None]  # B, dk, M
    v = torch.einsum("oc,bcm->bom", wv, ctx.flatten(2)) + bv[:, None]  # B, C, M
    dk = q.shape[1] // heads
    dv = c // heads
    outs = []
    for head in range(heads):
        qh, kh, vh = q[:, head * dk:(head + 1) * dk], k[:, head * dk:(head + 1) * dk], v[:, head * dv:(head + 1) * dv]
        logits = torch.einsum("bdn,bdm->bnm", qh, kh)
        if scaled:
            logits = logits / math.sqrt(dk)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        outs.append(torch.einsum("bnm,bom->bon", weights, vh))
    return torch.cat(outs, dim=1).reshape(b, c, h, w)


@pytest.mark.parametrize("heads,scaled", [(1, False), (2, True)])
def test_spatial_attention_matches_einsum_softmax(heads, scaled):
    torch.manual_seed(1)
    att = SpatialAttention(channels=4, context_channels=6, heads=heads, key_ratio=1, scaled=scaled, gamma_init=0.0)
    with torch.no_grad():
        att.gamma.fill_(0.7)
    x = torch.randn(2, 4, 3, 2)
    ctx = torch.randn(2, 6, 2, 2)
    expected = x + 0.7 * _attention_by_hand(att, x, ctx, heads, scaled)
    assert torch.allclose(att(x, ctx), expected, atol=1e-5)


def test_receiving_block_is_conv_of_sketch_plus_cross_attention():
    torch.manual_seed(2)
    config = dataclasses.replace(TINY_GAN, norm="none", reference_channels=6, attention_key_ratio=2,
                                 tag_encoder_widths=(8, 8, 16, 6))
    block = ReceivingBlock(4, config)
    with torch.no_grad():
        block.attention.gamma.fill_(1.3)
    sketch = torch.randn(2, 4, 2, 2)  # queries: the sketch features
    ref = torch.rand(2, 6, 3, 3)  # keys / values: φ(r), another grid size
    fused = sketch + 1.3 * _attention_by_hand(block.attention, sketch, ref, heads=1, scaled=False)
    conv = block.conv[0]
    expected = F.leaky_relu(F.conv2d(fused, conv.weight, conv.bias, padding=1), 0.2)
    assert torch.allclose(block(sketch, ref), expected, atol=1e-5)
    # the output depends on the reference (swap the references of the two samples)
    assert not torch.allclose(block(sketch, ref.flip(0)), expected, atol=1e-4)


def test_receiving_block_add_ablation_adds_pooled_reference():
    config = dataclasses.replace(TINY_GAN, norm="none", reference_fusion="add", reference_channels=4,
                                 tag_encoder_widths=(8, 8, 16, 4))
    block = ReceivingBlock(4, config)
    sketch = torch.randn(1, 4, 2, 2)
    ref = torch.rand(1, 4, 3, 3)
    fused = sketch + ref.sum(dim=(2, 3))[:, :, None, None] / 9
    conv = block.conv[0]
    assert torch.allclose(block(sketch, ref), F.leaky_relu(F.conv2d(fused, conv.weight, conv.bias, padding=1), 0.2),
                          atol=1e-5)


# ------------------------------------------------------------------------------------------------ pixel shuffle


def test_pixel_shuffle_upsampling_shapes_and_layout():
    torch.manual_seed(3)
    up = PixelShuffleUpsample(8, 5, "none", None)
    x = torch.randn(2, 8, 3, 4)
    y = up(x)
    assert y.shape == (2, 5, 6, 8)
    assert up.conv.out_channels == 20
    z = F.conv2d(x, up.conv.weight, up.conv.bias, padding=1)  # (2, 20, 3, 4)
    for c in range(5):
        for a in range(2):
            for b in range(2):
                # sub-pixel rule: out[c, 2i + a, 2j + b] = conv[4c + 2a + b, i, j]
                assert torch.allclose(y[:, c, a::2, b::2], z[:, 4 * c + 2 * a + b], atol=1e-6)


@pytest.mark.parametrize("size", [(32, 32), (64, 96)])
def test_generator_decoder_shapes(size):
    g = ColorizationGenerator(TINY_GAN).eval()
    h, w = size
    w5 = TINY_GAN.encoder_widths
    with torch.no_grad():
        image, feats = g(torch.randn(1, 3, h, w), torch.rand(1, 16, 2, 2), return_features=True)
    assert image.shape == (1, 3, h, w)
    assert feats["received"].shape == (1, w5[4], h // 32, w // 32)
    for j in range(1, 5):
        assert feats[f"decoder{j}"].shape == (1, w5[5 - j], h // 2 ** (5 - j), w // 2 ** (5 - j))


def test_generator_rejects_size_not_multiple_of_32():
    with pytest.raises(ValueError):
        ColorizationGenerator(TINY_GAN)(torch.randn(1, 3, 48, 64), torch.rand(1, 16, 1, 2))


# -------------------------------------------------------------------------------------------- Table 4.1 full size


def _conv(c_in, c_out, k=3, bias=False):
    return c_in * c_out * k * k + (c_out if bias else 0)


def _full_generator_parameter_count() -> int:
    def bn(c):  # BatchNorm weight + bias
        return 2 * c

    def attn(c, ctx):  # 1x1 query (c -> c/8), key (ctx -> c/8), value (ctx -> c), all with bias; + γ
        return (c * (c // 8) + c // 8) + (ctx * (c // 8) + c // 8) + (ctx * c + c) + 1

    def se(c, ref):  # RBCA: Linear(ref -> ref/16) + Linear(ref/16 -> c)
        return (ref * (ref // 16) + ref // 16) + ((ref // 16) * c + c)

    total = 0
    # encoder: (in, out) per Table 4.1 (fourth row read as 256 -> 512); first conv unnormalised, with bias
    total += _conv(3, 64, bias=True) + _conv(64, 64) + bn(64)
    for c_in, c_out in [(64, 128), (128, 256), (256, 512), (512, 512)]:
        total += _conv(c_in, c_out) + bn(c_out) + _conv(c_out, c_out) + bn(c_out)
    total += _conv(512, 512) + bn(512)  # intermediate conv
    total += attn(512, 512) + _conv(512, 512) + bn(512)  # receiving block: attention + conv
    total += _conv(512, 2048) + bn(512) + attn(512, 512)  # decoder 1: conv + pixel shuffle + self-attention
    total += _conv(1024, 2048) + bn(512) + se(512, 512)  # decoder 2: + RBCA
    total += _conv(1024, 1024) + bn(256) + se(256, 512)  # decoder 3
    total += _conv(512, 512) + bn(128) + se(128, 512)  # decoder 4
    total += _conv(256, 256) + bn(64) + _conv(64, 3, bias=True)  # conv + upsample + conv (+ tanh)
    return total


FULL_GENERATOR_PARAMETERS = 55_566_501


def test_table_4_1_widths_and_parameter_count_at_full_size():
    with torch.device("meta"):
        g = ColorizationGenerator(GANConfig())
    enc = [(lvl.conv[0].in_channels, lvl.conv[0].out_channels, lvl.down[0].out_channels, lvl.down[0].stride[0])
           for lvl in g.encoder]
    assert enc == [(3, 64, 64, 2), (64, 128, 128, 2), (128, 256, 256, 2), (256, 512, 512, 2), (512, 512, 512, 2)]
    assert (g.intermediate[0].in_channels, g.intermediate[0].out_channels) == (512, 512)
    att = g.receiving.attention
    assert (att.query.in_channels, att.key.in_channels, att.value.out_channels) == (512, 512, 512)
    assert g.receiving.conv[0].out_channels == 512
    dec = [(lvl.upsample.conv.in_channels, lvl.upsample.conv.out_channels, lvl.kind) for lvl in g.decoder]
    assert dec == [(512, 2048, "self_attention"), (1024, 2048, "rbca"), (1024, 1024, "rbca"), (512, 512, "rbca")]
    assert (g.head_upsample.conv.in_channels, g.head_upsample.conv.out_channels) == (256, 256)
    assert (g.to_image.in_channels, g.to_image.out_channels) == (64, 3)
    # the attention outputs: 2048 / 4 = 512 after the shuffle, and the RBCA widths 512 / 256 / 128
    assert [lvl.attention.excite.out_features for lvl in g.decoder[1:]] == [512, 256, 128]
    count = sum(p.numel() for p in g.parameters())
    print(f"full generator parameters: {count:,}")
    assert count == _full_generator_parameter_count() == FULL_GENERATOR_PARAMETERS


def test_full_size_meta_forward_shapes():
    with torch.device("meta"):
        g = ColorizationGenerator(GANConfig()).eval()
        d = PatchDiscriminator(GANConfig())
        sketch = torch.empty(1, 3, 256, 256)
        image = g(sketch, torch.empty(1, 512, 8, 8))
        patches = d(sketch, image)
    assert image.shape == (1, 3, 256, 256)
    assert patches.shape == (1, 1, 30, 30)  # the pix2pix 70 x 70 PatchGAN's map at 256 px


def test_discriminator_patch_map_and_parameter_count():
    d = PatchDiscriminator(TINY_GAN)
    out = d(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64 // 8 - 2, 64 // 8 - 2)
    with torch.device("meta"):
        full = PatchDiscriminator(GANConfig())
    expected = (_conv(6, 64, 4, bias=True) + _conv(64, 128, 4) + 256 + _conv(128, 256, 4) + 512
                + _conv(256, 512, 4) + 1024 + _conv(512, 1, 4, bias=True))
    assert sum(p.numel() for p in full.parameters()) == expected == 2_768_705


# ---------------------------------------------------------------------------------------------- reference encoder


def test_reference_encoder_features_are_nonnegative_stride_32_map():
    torch.manual_seed(4)
    enc = ReferenceTagEncoder(num_tags=7).eval()
    with torch.no_grad():
        phi = enc.features(torch.randn(1, 3, 64, 96))
        logits = enc(torch.randn(1, 3, 64, 96))
    assert phi.shape == (1, 512, 2, 3)
    assert (phi >= 0).all()
    assert logits.shape == (1, 7)
    assert enc.fc.in_features == 512 and enc.fc.out_features == 7


def test_reference_encoder_loads_imagenet_style_state_dict_keeping_new_head():
    from torchvision.models import resnet34

    torch.manual_seed(5)
    src = resnet34(weights=None).state_dict()  # a 1000-class head, like the ImageNet weights
    enc = ReferenceTagEncoder(num_tags=6, state_dict=src)
    assert torch.equal(enc.backbone.conv1.weight, src["conv1.weight"])
    assert torch.equal(enc.backbone.layer4[2].bn2.running_mean, src["layer4.2.bn2.running_mean"])
    assert enc.fc.weight.shape == (6, 512)
    with pytest.raises(KeyError):
        ReferenceTagEncoder(num_tags=6, state_dict={"conv1.weight": src["conv1.weight"]})


# ---------------------------------------------------------------------------------------------------- losses


def _sig(z):
    return 1 / (1 + math.exp(-z))


def test_bce_against_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    p = [_sig(0.5), _sig(-1.0), _sig(2.0)]
    expected = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(1 - p[2]))
    assert multilabel_bce_loss(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_against_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 1.5, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    alpha = torch.tensor([0.25, 0.5, 0.9])
    total = 0.0
    for row in range(2):
        s = 0.0
        for i in range(3):
            p = _sig(logits[row, i].item())
            a = alpha[i].item()
            if y[row, i] == 1:
                s += a * (1 - p) ** 2 * math.log(p)
            else:
                s += (1 - a) * p ** 2 * math.log(1 - p)
        total += -s
    assert focal_loss(logits, y, alpha, gamma=2.0).item() == pytest.approx(total / 2, rel=1e-6)


def test_focal_alpha_inverse_to_frequency():
    alpha = focal_alpha_from_counts(torch.tensor([50, 500, 5, 0, 5000]))
    assert alpha.tolist() == pytest.approx([5 / 50, 5 / 500, 1.0, 1.0, 5 / 5000])
    # inversely proportional: α_i · n_i is constant over the tags that occur
    counts = torch.tensor([3.0, 7.0, 11.0])
    prod = focal_alpha_from_counts(counts) * counts
    assert torch.allclose(prod, torch.full((3,), 3.0))


def test_tv_loss_closed_form_on_a_ramp():
    h, w, c, p, q = 4, 5, 3, 0.3, -0.2
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    img = (p * i + q * j).expand(c, h, w)[None].clone()
    expected = (h - 1) * (w - 1) * math.sqrt(c * (p * p + q * q))
    assert total_variation_loss(img, eta=1.0, eps=0.0).item() == pytest.approx(expected, rel=1e-9)
    assert total_variation_loss(img, eta=1.0, eps=0.0, reduction="mean").item() == pytest.approx(
        expected / ((h - 1) * (w - 1)), rel=1e-9)


def test_tv_loss_two_by_two_by_hand():
    img = torch.tensor([[[[1.0, 4.0], [5.0, 0.0]]]])  # only position (0, 0) has both neighbours
    assert total_variation_loss(img, eps=0.0).item() == pytest.approx(math.sqrt((5 - 1) ** 2 + (4 - 1) ** 2))


def test_cgan_and_total_losses_against_formulas():
    real = torch.tensor([[[[0.5, -0.2]]]])
    fake = torch.tensor([[[[1.0, -2.0]]]])
    d_real = -(math.log(_sig(0.5)) + math.log(_sig(-0.2))) / 2
    d_expected = d_real - (math.log(1 - _sig(1.0)) + math.log(1 - _sig(-2.0))) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    g_ns = -(math.log(_sig(1.0)) + math.log(_sig(-2.0))) / 2
    assert generator_adversarial_loss(fake).item() == pytest.approx(g_ns, rel=1e-6)
    g_sat = (math.log(1 - _sig(1.0)) + math.log(1 - _sig(-2.0))) / 2
    assert generator_adversarial_loss(fake, saturating=True).item() == pytest.approx(g_sat, rel=1e-6)
    gen = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    tgt = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    l1 = (1 + 0 + 0.5 + 0.5) / 4
    assert l1_loss(gen, tgt).item() == pytest.approx(l1)
    tv = math.sqrt(0.5 ** 2 + 1.0 ** 2)
    weights = GANLossWeights(cgan=2.0, l1=10.0, tv=0.5)
    total, terms = generator_total_loss(fake, gen, tgt, weights)
    assert terms["tv"].item() == pytest.approx(tv, rel=1e-6)
    assert total.item() == pytest.approx(2.0 * g_ns + 10.0 * l1 + 0.5 * tv, rel=1e-5)


# ------------------------------------------------------------------------------------------ tiny train step


def test_tiny_generator_forward_backward_on_cpu():
    torch.manual_seed(6)
    config = dataclasses.replace(TINY_GAN, attention_gamma_init=0.1)
    g = ColorizationGenerator(config)
    d = PatchDiscriminator(config)
    sketch = torch.randn(2, 3, 64, 64)
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    ref = torch.rand(2, 16, 2, 2)
    start = time.perf_counter()
    fake = g(sketch, ref)
    assert fake.shape == (2, 3, 64, 64)
    assert fake.abs().max() <= 1
    total, terms = generator_total_loss(d(sketch, fake), fake, target)
    assert set(terms) == {"cgan", "l1", "tv"}
    total.backward()
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    grads = {name: p.grad for name, p in g.named_parameters()}
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads.values())
    assert grads["receiving.attention.query.weight"].abs().sum() > 0  # the reference path gets gradient
    assert grads["decoder.1.attention.squeeze.weight"].abs().sum() > 0  # RBCA too
