"""Stage-2 tag manipulation of the chapter-4 GAN framework (thesis §4.3): Eq. 4.15-4.18, tag edits, M-Add.

Expected values are written out by hand (literals or explicit formulas), never by calling the code twice.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from colorize.errors import InputError
from colorize.families.gan.manipulation import (
    ManipulationConfig,
    SelfAdaptiveMLP,
    SpatialFactorLayer,
    TagManipulator,
    apply_tag_edits,
    edit_reference_features,
    global_average_pool,
    hybrid_loss,
    inversion_loss,
    manipulation_losses,
    spatial_factor,
)


def anchor_map() -> torch.Tensor:
    """ϕ(r_a) (1, 2, 2, 2): channel 0 has GAP 2, channel 1 is all zero (GAP 0: the §4.3.1 rule)."""
    return torch.tensor([[[[1.0, 3.0], [0.0, 4.0]],
                          [[0.0, 0.0], [0.0, 0.0]]]])


def two_channel(mode: str = "attention") -> ManipulationConfig:
    return ManipulationConfig(num_tags=3, feature_channels=2, hidden_widths=(4, 4), mode=mode)


# --- Eq. 4.11/4.16: spatial factor and the division-by-zero rule --------------------------------------------

def test_spatial_factor_divides_by_channel_gap_and_zero_gap_gives_zero():
    ratio = spatial_factor(anchor_map())
    expected = torch.tensor([[[[0.5, 1.5], [0.0, 2.0]],
                              [[0.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(ratio, expected)


def test_zero_rule_is_on_the_denominator_even_with_nonzero_numerator():
    # GAP = (1 - 1 + 2 - 2) / 4 = 0 although the entries are not zero: the ratio is defined as 0.
    features = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]], [[2.0, 2.0], [2.0, 6.0]]]])
    ratio = spatial_factor(features)
    assert torch.equal(ratio[0, 0], torch.zeros(2, 2))
    assert torch.allclose(ratio[0, 1], torch.tensor([[2 / 3, 2 / 3], [2 / 3, 2.0]]))


def test_zero_rule_keeps_gradients_finite():
    features = anchor_map().requires_grad_(True)
    spatial_factor(features).sum().backward()
    assert torch.isfinite(features.grad).all()
    assert torch.equal(features.grad[0, 1], torch.zeros(2, 2))


def test_gap_is_the_spatial_mean():
    assert torch.equal(global_average_pool(anchor_map()), torch.tensor([[2.0, 0.0]]))


# --- Eq. 4.15/4.16: δ_b ---------------------------------------------------------------------------------------

def test_attention_edit_with_identity_omega_is_eq_4_14():
    manipulator = TagManipulator(two_channel())
    mapped_anchor = torch.tensor([[1.0, 1.0]])
    mapped_target = torch.tensor([[3.0, 5.0]])  # Δ = (2, 4)
    delta_b = manipulator.edit(anchor_map(), mapped_anchor, mapped_target)
    # channel 0: a + (a / 2) * 2; channel 1: 0 + 0 * 4 (zero-GAP channel gets no edit)
    expected = torch.tensor([[[[2.0, 6.0], [0.0, 8.0]],
                              [[0.0, 0.0], [0.0, 0.0]]]])
    assert torch.allclose(delta_b, expected)


def test_omega_mixes_channels_at_every_position():
    manipulator = TagManipulator(two_channel())
    with torch.no_grad():
        manipulator.omega.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swap channels
        manipulator.omega.fc.bias.copy_(torch.tensor([0.5, 0.0]))
    # F ch0 = ratio ch1 + 0.5 = 0.5 everywhere; F ch1 = ratio ch0 = [[0.5, 1.5], [0, 2]]
    f = manipulator.modulation(anchor_map())
    assert torch.allclose(f, torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[0.5, 1.5], [0.0, 2.0]]]]))
    delta_b = manipulator.edit(anchor_map(), torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 5.0]]))
    expected = torch.tensor([[[[1 + 1.0, 3 + 1.0], [0 + 1.0, 4 + 1.0]],
                              [[0.5 * 4, 1.5 * 4], [0.0 * 4, 2.0 * 4]]]])
    assert torch.allclose(delta_b, expected)


def test_edit_reproduces_target_exactly_when_spatial_factors_agree():
    # ϕ(r_t) = ϕ(r_a) scaled per channel ⇒ w(r_t) = w(r_a), so Eq. 4.14 is exact with perfect codes.
    a = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[4.0, 0.0], [0.0, 4.0]]]])  # GAP (3, 2)
    t = a * torch.tensor([2.0, 0.5])[None, :, None, None]                     # GAP (6, 1)
    w_a = a / torch.tensor([3.0, 2.0])[None, :, None, None]
    delta_b = edit_reference_features(a, torch.tensor([[6.0, 1.0]]), torch.tensor([[3.0, 2.0]]), w_a)
    assert torch.allclose(delta_b, t)


def test_add_mode_has_no_omega_and_adds_the_broadcast_difference():
    add, attention = TagManipulator(two_channel("add")), TagManipulator(two_channel("attention"))
    assert add.omega is None and add.modulation(anchor_map()) is None
    assert not any("omega" in name for name, _ in add.named_parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(attention) - count(add) == 2 * 2 + 2  # ω: one 2→2 fc with bias
    delta_b = add.edit(anchor_map(), torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 5.0]]))
    expected = torch.tensor([[[[3.0, 5.0], [2.0, 6.0]],
                              [[4.0, 4.0], [4.0, 4.0]]]])
    assert torch.allclose(delta_b, expected)


def test_config_rejects_unknown_mode_and_is_frozen():
    with pytest.raises(ValueError, match="mode"):
        ManipulationConfig(mode="concat")
    config = ManipulationConfig.tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "add"
    assert config.uses_spatial_factor and not ManipulationConfig.tiny("add").uses_spatial_factor


# --- tag edits → cls_t ----------------------------------------------------------------------------------------

def test_tag_edits_set_values_and_extrapolate():
    cls_a = torch.tensor([0.1, 0.2, 0.3, 0.4])
    cls_t = apply_tag_edits(cls_a, {1: 5.0, 3: 0.0})
    assert torch.equal(cls_t, torch.tensor([0.1, 5.0, 0.3, 0.0]))
    assert torch.equal(cls_a, torch.tensor([0.1, 0.2, 0.3, 0.4]))  # not modified in place


def test_tag_edits_apply_to_every_row_of_a_batch():
    cls_a = torch.tensor([[0.1, 0.2, 0.3], [0.7, 0.8, 0.9]])
    cls_t = apply_tag_edits(cls_a, {0: 2.0})
    assert torch.equal(cls_t, torch.tensor([[2.0, 0.2, 0.3], [2.0, 0.8, 0.9]]))
    assert torch.equal(apply_tag_edits(cls_a, {}), cls_a)


@pytest.mark.parametrize("edits", [{4: 1.0}, {-1: 1.0}, {1: float("nan")}, {1: float("inf")}, {True: 1.0}])
def test_tag_edits_reject_bad_indices_and_values(edits):
    with pytest.raises(InputError):
        apply_tag_edits(torch.zeros(4), edits)


# --- Eq. 4.18 and Eq. 4.17 ------------------------------------------------------------------------------------

def test_inversion_loss_by_hand():
    target = torch.tensor([[[[2.0, 4.0]], [[0.0, 2.0]]]])   # GAP (3, 1)
    anchor = torch.tensor([[[[1.0, 1.0]], [[4.0, 0.0]]]])   # GAP (1, 2)  → GAP difference (2, -1)
    mapped_t, mapped_a = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]])  # mapped difference (1, -1)
    # |2 - 1| = 1, |-1 - (-1)| = 0 → mean 0.5
    assert inversion_loss(target, anchor, mapped_t, mapped_a).item() == pytest.approx(0.5)


def test_inversion_loss_is_zero_when_eq_4_9_holds():
    target = torch.tensor([[[[2.0, 4.0]], [[0.0, 2.0]]]])
    anchor = torch.tensor([[[[1.0, 1.0]], [[4.0, 0.0]]]])
    loss = inversion_loss(target, anchor, torch.tensor([[12.0, 9.0]]), torch.tensor([[10.0, 10.0]]))
    assert loss.item() == 0.0


def test_hybrid_loss_by_hand():
    target_image, edited_image = torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[1.0, 1.0]]]])  # mean 0.5
    target_psi = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    edited_psi = [torch.tensor([[2.0, 4.0]]), torch.tensor([0.0])]  # means 1.5 and 3.0
    assert hybrid_loss(target_image, edited_image, target_psi, edited_psi).item() == pytest.approx(5.0)
    weighted = hybrid_loss(target_image, edited_image, target_psi, edited_psi, pixel_weight=2.0, feature_weight=0.5)
    assert weighted.item() == pytest.approx(2.0 * 0.5 + 0.5 * 4.5)


def test_hybrid_loss_needs_paired_feature_maps():
    with pytest.raises(ValueError):
        hybrid_loss(torch.zeros(1, 3), torch.zeros(1, 3), [torch.zeros(1)], [])


# --- mapping network φ ----------------------------------------------------------------------------------------

def test_self_adaptive_mlp_matches_hand_written_formula():
    torch.manual_seed(0)
    mlp = SelfAdaptiveMLP(num_tags=3, out_channels=2, hidden_widths=(4, 5), leaky_slope=0.2)
    cls = torch.tensor([[0.0, 0.5, 5.0], [1.0, 0.2, 0.0]])

    def leaky(v):
        return torch.where(v > 0, v, 0.2 * v)

    l1, l2 = mlp.layers
    h1 = leaky(cls @ l1.weight.T + l1.bias)
    h2 = leaky(h1 @ l2.weight.T + l2.bias)
    concat = torch.cat([h1, h2], dim=1)
    logits = concat @ mlp.layer_weights.weight.T + mlp.layer_weights.bias
    alpha = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    weighted = torch.cat([alpha[:, :1] * h1, alpha[:, 1:] * h2], dim=1)
    expected = weighted @ mlp.project.weight.T + mlp.project.bias
    out = mlp(cls)
    assert out.shape == (2, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(mlp.adaptive_weights(mlp.layer_outputs(cls)).sum(dim=1), torch.ones(2))


def test_mapping_network_rejects_wrong_tag_count():
    with pytest.raises(ValueError, match="class probabilities"):
        SelfAdaptiveMLP(3, 2, (4,))(torch.zeros(1, 4))


def test_spatial_factor_layer_starts_as_identity():
    layer = SpatialFactorLayer(2)
    assert torch.equal(layer(anchor_map()), spatial_factor(anchor_map()))


class ToyGenerator(nn.Module):
    """A frozen stand-in for G: ψ = 1×1 conv of the reference features, image = sketch + upsampled ψ."""

    def __init__(self, channels: int):
        super().__init__()
        self.psi = nn.Conv2d(channels, 3, 1)

    def forward(self, sketch, reference):
        psi = self.psi(reference)
        image = sketch + nn.functional.interpolate(psi, size=sketch.shape[-2:])
        return image, [psi]


@pytest.mark.parametrize("mode", ["attention", "add"])
def test_tiny_training_step_forward_backward(mode):
    torch.manual_seed(0)
    config = ManipulationConfig.tiny(mode)
    manipulator = TagManipulator(config)
    generator = ToyGenerator(config.feature_channels).requires_grad_(False).eval()
    sketch = torch.rand(2, 3, 8, 8)
    target_features, anchor_features = torch.rand(2, 4, 2, 2), torch.rand(2, 4, 2, 2)
    cls_t, cls_a = torch.rand(2, config.num_tags), torch.rand(2, config.num_tags)
    optimizer = torch.optim.Adam(manipulator.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        losses = manipulation_losses(manipulator, generator, sketch, target_features, anchor_features, cls_t, cls_a)
        optimizer.zero_grad()
        losses["total"].backward()
        if first is None:
            first = losses["total"].item()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in manipulator.parameters())
            assert manipulator.mapping.layers[0].weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in generator.parameters())
        optimizer.step()
    assert ("inv" in losses) == (mode == "attention")
    if mode == "add":
        assert torch.equal(losses["total"], losses["hybrid"])
    else:
        assert losses["total"].item() == pytest.approx(losses["hybrid"].item() + losses["inv"].item(), rel=1e-6)
    assert losses["total"].item() < first
