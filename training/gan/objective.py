"""The objectives of the three chapter-4 GAN stages, one micro-batch at a time (thesis §4.2.1, §4.2.2, §4.3.2).

The losses themselves are :mod:`colorize.families.gan.losses` and :mod:`colorize.families.gan.manipulation`;
this module feeds them a batch (:mod:`training.gan.data`) and says what the thesis leaves open:

Tagger (§4.2.1, Eq. 4.1 + Eq. 4.2): BCE and focal loss weighted 1 and 1 (``objective.bce_weight`` /
``focal_weight``; the thesis gives none), γ = 2 (thesis, ``objective.focal_gamma``), α_i inversely proportional
to the frequency of tag i among the *training records* (:func:`focal_alpha_from_counts`: the rarest tag gets 1;
the alternative, α normalised to sum 1, makes every α tiny at C = 6000). The input is the reference image (the
ground truth, flipped half of the time); the alternative, a random crop as in ImageNet training, is not used
because φ(r) later sees the whole reference.

Stage 1 (§4.2.2, Eq. 4.3-4.7): the reference is H(y), the ground truth deformed (Eq. 4.7); φ(r) comes from the
frozen tag encoder in eval mode, without gradient. D is the pix2pix patch discriminator, shown the real pair
(x, y) and the fake pair (x, G(x, φ(r))) in two passes (BatchNorm statistics per pass, as pix2pix); the
alternative, one pass over both, mixes their statistics. Its loss is the vanilla log form unscaled
(pix2pix halves it: a constant factor Adam almost ignores). G minimises Eq. 4.3 with the non-saturating
cGAN term; λ_cGAN = 1, λ_L1 = 100 (pix2pix; the thesis gives none), λ_tv = 1e-5 on the per-image TV sum of
Eq. 4.6 (a placeholder; ``objective.tv_reduction=mean`` for the per-pixel mean). Updates: one D step and one G
step per training step (D:G = 1:1, pix2pix), both from the same micro-batches; G's adversarial term is computed
with D's weights of before this step's D update (simultaneous updates). pix2pix alternates (D first, then G
against the updated D); that needs either a second generator pass per micro-batch or generator graphs kept across
the D update, which gradient accumulation under DDP does not allow cleanly. Learning rates: 2e-4 for both,
Adam betas (0.5, 0.999) (pix2pix; ``optim.discriminator_lr`` gives D its own).

Stage 2 (§4.3.1-4.3.2, Eq. 4.10-4.18): pairs inside a micro-batch. Sample i is the target: r_t its deformed
reference (the ground truth of its sketch x_i, as in stage 1), cls_t the frozen tagger's sigmoid probabilities
of r_t; its anchor r_a is the reference of sample i - 1 of the same micro-batch (``torch.roll`` by one), so every
sample is a target once and an anchor once and no extra image is read (the alternative: a random image of the
dataset as anchor). ψ are all five maps the generator returns (the receiving block and the four decoder levels),
each feature term weighted 1 like the pixel term (:func:`~colorize.families.gan.manipulation.hybrid_loss`). The
generator and encoder are frozen in eval mode; only φ and ω (M-Attention; φ alone in M-Add) get gradients.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from colorize.families.gan.losses import (
    GANLossWeights,
    discriminator_loss,
    focal_loss,
    generator_total_loss,
    multilabel_bce_loss,
)
from colorize.families.gan.manipulation import TagManipulator, manipulation_losses
from colorize.families.gan.networks import ColorizationGenerator, ReferenceTagEncoder
from training.config import ObjectiveConfig


def on_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def tagger_losses(model: nn.Module, batch: dict[str, Tensor], alpha: Tensor, objective: ObjectiveConfig,
                  autocast: Callable[[], Any]) -> dict[str, Tensor]:
    """Eq. 4.1 + Eq. 4.2 of the tag logits of the reference: ``{"loss", "bce", "focal"}`` (``loss`` is
    :func:`~colorize.families.gan.losses.tag_classification_loss` with the configured weights)."""
    with autocast():
        logits = model(batch["reference"])
    logits = logits.float()
    bce = multilabel_bce_loss(logits, batch["tags"])
    focal = focal_loss(logits, batch["tags"], alpha, objective.focal_gamma)
    return {"loss": objective.bce_weight * bce + objective.focal_weight * focal, "bce": bce, "focal": focal}


@torch.no_grad()
def reference_code(encoder: ReferenceTagEncoder, reference: Tensor, autocast: Callable[[], Any]
                   ) -> tuple[Tensor, Tensor]:
    """φ(r) and the tag probabilities cls of the frozen encoder (float32, no gradient)."""
    with autocast():
        features = encoder.features(reference)
        logits = encoder.logits_from_features(features)
    return features.float(), torch.sigmoid(logits.float())


class frozen:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Parameters of ``module`` without gradients inside the block (G's adversarial term must not reach D)."""

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


def stage1_losses(encoder: ReferenceTagEncoder, generator: nn.Module, discriminator: nn.Module,
                  discriminator_module: nn.Module, batch: dict[str, Tensor], objective: ObjectiveConfig,
                  autocast: Callable[[], Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``(d_loss, g_loss, parts)`` of one micro-batch (Eq. 4.3-4.7; see the module docstring).

    ``generator`` / ``discriminator`` may be DDP wrappers (they get the backward passes); the generator's
    adversarial term goes through ``discriminator_module`` (the bare D, its parameters frozen for it)."""
    sketch, color = batch["sketch"], batch["color"]
    features, _ = reference_code(encoder, batch["reference"], autocast)
    with autocast():
        fake = generator(sketch, features)
        real_logits = discriminator(sketch, color)
        fake_logits = discriminator(sketch, fake.detach())
    d_loss = discriminator_loss(real_logits.float(), fake_logits.float())
    with frozen(discriminator_module), autocast():
        adversarial = discriminator_module(sketch, fake)
    weights = GANLossWeights(objective.cgan_weight, objective.l1_weight, objective.tv_weight)
    g_loss, terms = generator_total_loss(adversarial.float(), fake.float(), color, weights, objective.tv_reduction)
    parts = {"g_loss": g_loss.detach(), "d_loss": d_loss.detach(), **{k: v.detach() for k, v in terms.items()},
             "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
             "d_fake": torch.sigmoid(fake_logits.detach().float()).mean()}
    return d_loss, g_loss, parts


def generator_with_features(generator: ColorizationGenerator
                            ) -> Callable[[Tensor, Tensor], tuple[Tensor, list[Tensor]]]:
    """G as :func:`manipulation_losses` calls it: ``(image, [ψ maps])``, in float32."""
    def run(sketch: Tensor, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        image, maps = generator(sketch, features, return_features=True)
        return image.float(), [m.float() for m in maps.values()]
    return run


class ManipulationObjective(nn.Module):
    """Stage 2's trainable forward, ``L_hybrid + L_inv`` of the tag mapper against the frozen generator, as a
    module whose only parameters are the mapper's (so DDP averages exactly those gradients)."""

    def __init__(self, mapper: TagManipulator, generator: ColorizationGenerator) -> None:
        super().__init__()
        self.mapper = mapper
        self._generator: Sequence[Callable[..., Any]] = (generator_with_features(generator),)  # not a submodule

    def forward(self, sketch: Tensor, target_features: Tensor, anchor_features: Tensor, cls_target: Tensor,
                cls_anchor: Tensor) -> dict[str, Tensor]:
        return manipulation_losses(self.mapper, self._generator[0], sketch, target_features, anchor_features,
                                   cls_target, cls_anchor)


def anchor_pairs(features: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
    """The anchors of a micro-batch's targets: sample i's anchor is sample i - 1 (see the module docstring)."""
    return features.roll(1, 0), cls.roll(1, 0)


def stage2_losses(encoder: ReferenceTagEncoder, objective_model: nn.Module, batch: dict[str, Tensor],
                  autocast: Callable[[], Any]) -> dict[str, Tensor]:
    """``{"loss", "hybrid"[, "inv"]}`` of one micro-batch (Eq. 4.10, 4.17, 4.18)."""
    features, cls = reference_code(encoder, batch["reference"], autocast)
    anchor_features, cls_anchor = anchor_pairs(features, cls)
    with autocast():
        losses = objective_model(batch["sketch"], features, anchor_features, cls, cls_anchor)
    return {"loss": losses["total"], **{k: v for k, v in losses.items() if k != "total"}}


__all__ = ["ManipulationObjective", "anchor_pairs", "frozen", "generator_with_features", "on_device",
           "reference_code", "stage1_losses", "stage2_losses", "tagger_losses"]
