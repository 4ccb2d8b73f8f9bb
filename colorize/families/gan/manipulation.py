"""Stage-2 tag-based manipulation of the chapter-4 GAN framework (thesis §4.3), in plain PyTorch.

After stage 1 the generator ``G`` and the reference encoder ``ϕ`` (a tag-pretrained ResNet-34; ``ϕ(r)`` is its
last ReLU feature map, ``(B, 512, H/32, W/32)``, and its sigmoid head gives the class probabilities ``cls``) are
frozen. Stage 2 trains only two small modules (thesis §4.3.1, Eq. 4.10):

* the mapping network ``φ`` (:class:`SelfAdaptiveMLP`, thesis §4.3.2 "Mapping network design", Fig. 4.11):
  class probabilities ``(B, C)`` → one latent code ``(B, feature_channels)`` in the space of ``GAP(ϕ(r))``;
* the spatial-factor layer ``ω`` (:class:`SpatialFactorLayer`, Eq. 4.16): one fully connected layer.

An edit moves the anchor's reference features along the mapped tag difference (Eq. 4.15)::

    δ_b = ϕ(r_a) + F(r_a) * (φ(cls_t) − φ(cls_a)),   F(r_a) = ω(ϕ(r_a) / GAP(ϕ(r_a)))

and ``δ_b`` replaces ``ϕ(r)`` as the generator's reference input. Training minimises ``L_hybrid + L_inv``
(Eq. 4.17, Eq. 4.18); :func:`manipulation_losses` is one training step's objective.

Two variants (:class:`ManipulationConfig` ``mode``):

* ``"attention"`` (*M-Attention*, the proposed model): ``ω`` exists, ``F(r_a)`` as above, loss
  ``L_hybrid + L_inv``. The frozen generator passed in is the stage-1 *Attention* generator.
* ``"add"`` (*M-Add*, the §4.3.1/§4.3.3 ablation): no ``ω`` and no ``L_inv`` ("these components are excluded
  when training the M-Add model, which does not utilize spatial information"); here ``F(r_a) ≡ 1``, so
  ``δ_b = ϕ(r_a) + broadcast(φ(cls_t) − φ(cls_a))`` and the loss is ``L_hybrid`` alone. The frozen generator
  passed in is the stage-1 *Add* generator (reference features globally averaged and added to the sketch
  features), which is what "replaces the attention mechanism with a simple additive operation for feature
  fusion" refers to; that fusion lives in the generator, not in this module.

Choices the thesis leaves open (each with its alternative):

* ``F ≡ 1`` in M-Add, so δ_b keeps ϕ(r_a)'s spatial shape (the same call works for both variants); the
  alternative, a pooled vector ``GAP(ϕ(r_a)) + Δ``, is equivalent for the *Add* generator because
  ``GAP(ϕ(r_a) + broadcast Δ) = GAP(ϕ(r_a)) + Δ``.
* ``ω`` acts on the channel axis at every spatial position (a ``C → C`` linear, i.e. a 1×1 convolution), since
  the thesis says L_inv helps ω learn "channel-wise relationships" of the spatial factor; the alternative, a
  linear over the flattened ``H·W`` positions per channel, would tie ω to one input resolution.
* ``ω`` starts as the identity (weight ``I``, bias 0) so that at step 0 ``F(r_a) = w(r_a)`` and Eq. 4.15 equals
  the derived approximation Eq. 4.14; ``omega_identity_init=False`` gives PyTorch's default initialisation.
* the self-adaptive MLP (Fig. 4.11 is not in the text): see :class:`SelfAdaptiveMLP`.
* tag edits *set* absolute values (Fig. 4.13 lists ``red_hair`` values 0.0…1.0, §4.3.3 goes to ~5); adding
  offsets to ``cls_a`` is the alternative. Nothing is clamped, so extrapolation is passed through.
* ``‖·‖_1`` with ``E`` is read as the mean absolute error over all elements (resolution independent); the
  per-sample sum is the alternative (a constant factor). Several ψ feature maps are summed, one term each.
* the pixel and feature terms of Eq. 4.17 and the two losses of Eq. 4.10 are weighted 1 as in the thesis; the
  weights are keyword arguments for experiments.
* the target branch ``G(x, ϕ(r_t))``/``ψ(x, ϕ(r_t))`` is computed without gradient (it is a fixed target for a
  frozen G); gradients reach φ and ω only through ``δ_b``.
* how (r_t, r_a) pairs and the sketch x are drawn is the caller's choice (e.g. ``r_a`` = another image of the
  batch, ``x`` = the sketch of r_t's ground truth).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from colorize.errors import InputError

#: frozen generator: (sketch (B, 3|1, H, W), reference features (B, C, h, w)) → (image, [ψ feature maps]).
FrozenGenerator = Callable[[Tensor, Tensor], tuple[Tensor, Sequence[Tensor]]]

ManipulationMode = Literal["attention", "add"]


@dataclass(frozen=True)
class ManipulationConfig:
    """Shapes and variant of the stage-2 modules (thesis §4.3).

    ``num_tags`` is C, the classifier's tag count (6000 in thesis §4.2.1, Fig. 4.3); ``feature_channels`` the
    channel count of ``ϕ(r)`` (512 for ResNet-34's last stage, spatial size ``H/32 × W/32``, patch_num = 32 in
    §4.3.1); ``hidden_widths`` the widths of the self-adaptive MLP's layers (the thesis gives none: four layers
    of 512 by default); ``mode`` ``"attention"`` (M-Attention) or ``"add"`` (M-Add, no ω, no L_inv).
    """

    num_tags: int = 6000
    feature_channels: int = 512
    hidden_widths: tuple[int, ...] = (512, 512, 512, 512)
    mode: ManipulationMode = "attention"
    leaky_slope: float = 0.2
    omega_identity_init: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("attention", "add"):
            raise ValueError(f"mode must be 'attention' (M-Attention) or 'add' (M-Add), not {self.mode!r}")
        if self.num_tags < 1 or self.feature_channels < 1:
            raise ValueError("num_tags and feature_channels must be positive")
        if not self.hidden_widths or any(w < 1 for w in self.hidden_widths):
            raise ValueError("hidden_widths needs at least one positive width")

    @property
    def uses_spatial_factor(self) -> bool:
        """Whether ω and L_inv are part of the model (M-Attention), thesis §4.3.1 after Eq. 4.10."""
        return self.mode == "attention"

    @classmethod
    def tiny(cls, mode: ManipulationMode = "attention") -> ManipulationConfig:
        """A few-parameter config for tests: 6 tags, 4 feature channels, three layers of 8."""
        return cls(num_tags=6, feature_channels=4, hidden_widths=(8, 8, 8), mode=mode)


def global_average_pool(features: Tensor) -> Tensor:
    """GAP over the spatial axes: ``(B, C, h, w)`` → ``(B, C)`` (thesis §4.3.1, Eq. 4.9/4.11)."""
    _check_feature_map(features, "features")
    return features.mean(dim=(-2, -1))


def spatial_factor(features: Tensor) -> Tensor:
    """``w(r) = ϕ(r) / GAP(ϕ(r))`` per channel, with the thesis' division-by-zero rule (§4.3.1, Eq. 4.11/4.16).

    The ratio ``ϕ(r_a)^c / GAP(ϕ(r_a))^c`` is defined as 0 at every position of a channel ``c`` whose GAP is
    exactly zero ("whenever the denominator is zero for any channel c"). With ReLU features a zero GAP means
    the whole channel is zero; the rule is applied on the denominator alone, exactly as stated, so it also
    holds for inputs with negative values. The comparison is exact (no epsilon) and the gradient stays finite.
    """
    gap = global_average_pool(features)[..., None, None]
    zero = gap == 0
    ratio = features / torch.where(zero, torch.ones_like(gap), gap)
    return torch.where(zero, torch.zeros_like(ratio), ratio)


def edit_reference_features(anchor_features: Tensor, mapped_target: Tensor, mapped_anchor: Tensor,
                            modulation: Tensor | None) -> Tensor:
    """Eq. 4.15: ``δ_b = ϕ(r_a) + F(r_a) * (φ(cls_t) − φ(cls_a))``.

    ``anchor_features`` ``ϕ(r_a)`` is ``(B, C, h, w)``; ``mapped_*`` are ``(B, C)`` codes, broadcast over the
    spatial axes "by replicating the channel values"; ``modulation`` is ``F(r_a)`` ``(B, C, h, w)``, or
    ``None`` for M-Add (``F ≡ 1``).
    """
    _check_feature_map(anchor_features, "anchor_features")
    b, c = anchor_features.shape[:2]
    for name, code in (("mapped_target", mapped_target), ("mapped_anchor", mapped_anchor)):
        if code.shape != (b, c):
            raise ValueError(f"{name} must be (B, C) = {(b, c)}, got {tuple(code.shape)}")
    delta = (mapped_target - mapped_anchor)[..., None, None]
    if modulation is None:
        return anchor_features + delta
    if modulation.shape != anchor_features.shape:
        raise ValueError(f"modulation must have ϕ(r_a)'s shape {tuple(anchor_features.shape)}, "
                         f"got {tuple(modulation.shape)}")
    return anchor_features + modulation * delta


class SelfAdaptiveMLP(nn.Module):
    """The mapping network φ: class probabilities ``(B, C)`` → latent code ``(B, feature_channels)``.

    Thesis §4.3.2 "Mapping network design", Fig. 4.11: instead of using only the last layer's output, the
    outputs of several intermediate layers are concatenated and adaptively weighted, so shallow cues ("hair",
    "eyes") are kept next to deep, global ones ("sky", "theme"). Here:

    1. ``h_1 = act(fc_1(cls))``, ``h_l = act(fc_l(h_{l-1}))`` for every width in ``hidden_widths``;
    2. ``H = concat(h_1, …, h_L)``;
    3. per-sample layer weights ``α = softmax(fc_α(H))`` ``(B, L)`` — the "self-adaptive" part;
    4. ``φ(cls) = fc_out(concat(α_1 h_1, …, α_L h_L))``, linear (no output activation: only differences of φ
       enter Eq. 4.15/4.18, and the range must follow extrapolated inputs).

    Left open by the thesis (figure only), with alternatives: every layer's output is used (alternative: a
    subset); the weighting is one softmax weight per layer computed from H (alternatives: an element-wise
    sigmoid gate over H as in squeeze-excitation, or static learned per-layer scalars); the weighted
    concatenation is projected by one linear (alternative: a weighted sum of equal-width layers); activation
    LeakyReLU(0.2) (alternative: ReLU); no input normalisation, so tag values beyond [0, 1] (§4.3.3) reach the
    network unchanged.
    """

    def __init__(self, num_tags: int, out_channels: int, hidden_widths: Sequence[int], leaky_slope: float = 0.2):
        super().__init__()
        widths = [num_tags, *hidden_widths]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.activation = nn.LeakyReLU(leaky_slope)
        concat = sum(hidden_widths)
        self.layer_weights = nn.Linear(concat, len(hidden_widths))
        self.project = nn.Linear(concat, out_channels)
        self.num_tags = num_tags

    def layer_outputs(self, cls: Tensor) -> list[Tensor]:
        """The activations ``h_1 … h_L`` of every layer."""
        if cls.ndim != 2 or cls.shape[1] != self.num_tags:
            raise ValueError(f"class probabilities must be (B, {self.num_tags}), got {tuple(cls.shape)}")
        outputs, h = [], cls
        for layer in self.layers:
            h = self.activation(layer(h))
            outputs.append(h)
        return outputs

    def adaptive_weights(self, outputs: Sequence[Tensor]) -> Tensor:
        """``α = softmax(fc_α(concat(h_1 … h_L)))``, one weight per layer and sample ``(B, L)``."""
        return torch.softmax(self.layer_weights(torch.cat(list(outputs), dim=1)), dim=1)

    def forward(self, cls: Tensor) -> Tensor:
        outputs = self.layer_outputs(cls)
        alpha = self.adaptive_weights(outputs)
        weighted = torch.cat([alpha[:, i:i + 1] * h for i, h in enumerate(outputs)], dim=1)
        return self.project(weighted)


class SpatialFactorLayer(nn.Module):
    """ω, "a single linear (fully connected) layer" (thesis §4.3.1, Eq. 4.16): ``F(r_a) = ω(w(r_a))``.

    Applied to the channel vector at every spatial position of ``w(r_a) = ϕ(r_a)/GAP(ϕ(r_a))`` (equivalently a
    1×1 convolution), ``(B, C, h, w)`` → ``(B, C, h, w)``. Identity-initialised when ``identity_init`` (see the
    module docstring for both choices and their alternatives).
    """

    def __init__(self, channels: int, identity_init: bool = True):
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        if identity_init:
            with torch.no_grad():
                self.fc.weight.copy_(torch.eye(channels))
                self.fc.bias.zero_()

    def forward(self, features: Tensor) -> Tensor:
        ratio = spatial_factor(features)
        return self.fc(ratio.movedim(1, -1)).movedim(-1, 1)


class TagManipulator(nn.Module):
    """The trainable stage-2 modules, φ (+ ω for M-Attention), and the edit δ_b (thesis §4.3.1, Eq. 4.15/4.16).

    ``forward(anchor_features, cls_anchor, cls_target)`` returns ``δ_b`` ``(B, C, h, w)``, the reference
    features the frozen generator receives instead of ``ϕ(r_a)``.
    """

    def __init__(self, config: ManipulationConfig):
        super().__init__()
        self.config = config
        self.mapping = SelfAdaptiveMLP(config.num_tags, config.feature_channels, config.hidden_widths,
                                       config.leaky_slope)
        self.omega = (SpatialFactorLayer(config.feature_channels, config.omega_identity_init)
                      if config.uses_spatial_factor else None)

    def modulation(self, anchor_features: Tensor) -> Tensor | None:
        """``F(r_a)`` (Eq. 4.16), or ``None`` for M-Add where F ≡ 1."""
        return None if self.omega is None else self.omega(anchor_features)

    def forward(self, anchor_features: Tensor, cls_anchor: Tensor, cls_target: Tensor) -> Tensor:
        return self.edit(anchor_features, self.mapping(cls_anchor), self.mapping(cls_target))

    def edit(self, anchor_features: Tensor, mapped_anchor: Tensor, mapped_target: Tensor) -> Tensor:
        """Eq. 4.15 from already-mapped codes (so a training step maps each class vector once)."""
        return edit_reference_features(anchor_features, mapped_target, mapped_anchor,
                                       self.modulation(anchor_features))


def apply_tag_edits(cls_anchor: Tensor, edits: Mapping[int, float]) -> Tensor:
    """cls_t from the reference's predicted cls_a and a user's ``{tag_index: value}`` (thesis §4.3.3).

    ``cls_anchor`` is ``(C,)`` or ``(B, C)`` (every row gets the same edits). Each edited tag's probability is
    *set* to ``value``; all other tags keep cls_a's values, so ``φ(cls_t) − φ(cls_a)`` only carries the edit.
    Values are not clamped: ``red_hair = 2.0`` or ``5.0`` extrapolates as in Fig. 4.14/4.15. Returns a new
    tensor; ``cls_anchor`` is not modified. Raises :class:`InputError` for an index outside ``[0, C)`` or a
    non-finite value.
    """
    if cls_anchor.ndim not in (1, 2):
        raise InputError(f"class probabilities must be (C,) or (B, C), got shape {tuple(cls_anchor.shape)}")
    num_tags = cls_anchor.shape[-1]
    target = cls_anchor.clone()
    for index, value in edits.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_tags:
            raise InputError(f"tag index {index!r} is not in [0, {num_tags}); use the tag's position in the "
                             f"classifier's tag list")
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"tag {index}: value {value} is not a finite number")
        target[..., index] = value
    return target


def inversion_loss(target_features: Tensor, anchor_features: Tensor, mapped_target: Tensor,
                   mapped_anchor: Tensor) -> Tensor:
    """L_inv (thesis §4.3.2, Eq. 4.18): ``‖(GAP(ϕ(r_t)) − GAP(ϕ(r_a))) − (φ(cls_t) − φ(cls_a))‖_1``.

    Feature maps are ``(B, C, h, w)`` (frozen encoder outputs), mapped codes ``(B, C)``; the mean absolute
    error over batch and channels is returned (a scalar). It enforces Eq. 4.9 directly.
    """
    gap_delta = global_average_pool(target_features) - global_average_pool(anchor_features)
    mapped_delta = mapped_target - mapped_anchor
    if mapped_delta.shape != gap_delta.shape:
        raise ValueError(f"mapped codes must be {tuple(gap_delta.shape)}, got {tuple(mapped_delta.shape)}")
    return (gap_delta - mapped_delta).abs().mean()


def hybrid_loss(target_image: Tensor, edited_image: Tensor, target_features: Sequence[Tensor],
                edited_features: Sequence[Tensor], pixel_weight: float = 1.0, feature_weight: float = 1.0) -> Tensor:
    """L_hybrid (thesis §4.3.2, Eq. 4.17): pixel-level plus feature-level L1 between two generator runs.

    ``target_image`` is ``G(x, ϕ(r_t))`` and ``edited_image`` ``G(x, δ_b)``; ``*_features`` are the matching
    lists of intermediate generator feature maps ``ψ(x, ·)`` (one or several, paired by position). Returns
    ``pixel_weight · mean|ΔG| + feature_weight · Σ_maps mean|Δψ|`` (weights 1 in the thesis).
    """
    if target_image.shape != edited_image.shape:
        raise ValueError(f"images differ in shape: {tuple(target_image.shape)} vs {tuple(edited_image.shape)}")
    target_features, edited_features = list(target_features), list(edited_features)
    if len(target_features) != len(edited_features) or not target_features:
        raise ValueError("give the same, non-zero number of target and edited feature maps")
    pixel = (target_image - edited_image).abs().mean()
    feature = sum((t - e).abs().mean() for t, e in zip(target_features, edited_features))
    return pixel_weight * pixel + feature_weight * feature


def manipulation_losses(manipulator: TagManipulator, generator: FrozenGenerator, sketch: Tensor,
                        target_features: Tensor, anchor_features: Tensor, cls_target: Tensor,
                        cls_anchor: Tensor) -> dict[str, Tensor]:
    """One stage-2 training objective (thesis §4.3.1, Eq. 4.10): ``L_hybrid + L_inv`` (M-Add: ``L_hybrid``).

    Inputs come from the frozen stage-1 networks: ``target_features``/``anchor_features`` are ``ϕ(r_t)``,
    ``ϕ(r_a)`` ``(B, C, h, w)``; ``cls_target``/``cls_anchor`` the classifier's sigmoid probabilities of r_t
    and r_a ``(B, num_tags)``; ``sketch`` is x. ``generator(sketch, reference_features)`` must return
    ``(image, [ψ feature maps])``; the caller freezes its parameters (``requires_grad_(False)``, ``eval()``).
    The target run is made under ``torch.no_grad``. Returns ``{"hybrid", "inv", "total"}`` (``"inv"`` only in
    M-Attention); backpropagate ``"total"`` into φ and ω.
    """
    mapped_target = manipulator.mapping(cls_target)
    mapped_anchor = manipulator.mapping(cls_anchor)
    delta_b = manipulator.edit(anchor_features, mapped_anchor, mapped_target)
    with torch.no_grad():
        target_image, target_psi = generator(sketch, target_features)
    edited_image, edited_psi = generator(sketch, delta_b)
    losses = {"hybrid": hybrid_loss(target_image, edited_image, target_psi, edited_psi)}
    total = losses["hybrid"]
    if manipulator.config.uses_spatial_factor:
        losses["inv"] = inversion_loss(target_features, anchor_features, mapped_target, mapped_anchor)
        total = total + losses["inv"]
    losses["total"] = total
    return losses


def _check_feature_map(features: Tensor, name: str) -> None:
    if features.ndim != 4:
        raise ValueError(f"{name} must be a (B, C, h, w) feature map, got shape {tuple(features.shape)}")
