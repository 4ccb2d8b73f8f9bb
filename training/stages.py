"""Training stages: each is a named set of config defaults plus the module groups it trains.

v1 (thesis §5.4) trains the whole U-Net and the sketch encoder in two stages; the VAE and the CLIP reference
encoder are always frozen (official ``refnet/ldm/ddpm.py:233-245`` at commit ``c9bd9fb``). v1.5 (§5.5) trains only
the split LoRA, the recovery transformer and the threshold embedder; v2 (§5.6.1) trains the background branch,
then the style branch. A stage's ``version`` is the family whose training model it trains
(``Family.training_model``); ``model_options`` are passed to that model's ``training_inputs``. A stage registered
with ``unavailable`` set is a placeholder that raises :class:`NotImplementedError` with that reason (none at
present).

Module groups: ``unet``, ``sketch_encoder`` (trainable in v1), ``vae``, ``clip`` (never trainable); v1.5 adds
``unet.lora`` (the fg/bg LoRA pairs inside the U-Net), ``thresh_embedder`` and ``recovery_transformer``; v2 adds
``unet.warp`` / ``unet.style`` (the background / style injection modules), ``bg_encoder`` and ``style_encoder``.
The chapter-4 GAN (``version="gan"``, trained by :mod:`training.gan`) has ``tag_encoder``, ``generator``,
``discriminator`` and ``tag_mapper``.

Thesis vs official code (``refnet/models/trainer/trainer.py:64-172``, ``configs/training/*.yaml``): the thesis trains
Stage I with noisy references and a 10 % reference
drop, then Stage II with clean references and a 50 % drop; the released ``mult`` training config has
``noisy_training`` off and ``ucg_rate`` 0.5 (i.e. Stage II settings, or the thesis' *Drop-0.5* ablation) and
does not say which configuration produced the released weights. The stage defaults follow the thesis; the
official noisy-training code supplies what the thesis leaves open (the same ᾱ schedule as the latents and the
late-timestep mapping ``t' = 999 - t`` for ``t ≥ 900``). Both use AdamW at 1e-5 without a schedule (optional
warm-up here), no EMA, offset noise 0.05 (official configs; the thesis does not mention it) and ``t ~ U{0..999}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

FROZEN_GROUPS: tuple[str, ...] = ("vae", "clip")
#: The official XL crop sizes (``configs/training/sdxl-base.yaml`` ``crop_size``): 1024² four times, then nine
#: aspect pairs of about 1024² area, each side a multiple of 32.
XL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1024, 1024), (1024, 1024), (1024, 1024),
    *((h, w) for a, b in ((992, 1056), (960, 1088), (928, 1120), (896, 1152), (864, 1184), (832, 1216),
                          (800, 1248), (768, 1280), (736, 1312)) for h, w in ((a, b), (b, a))),
)


@dataclass(frozen=True)
class Stage:
    """A stage: ``trainable`` module groups and config ``defaults`` (a nested dict, overridden by the file)."""

    name: str
    title: str
    version: str
    trainable: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None  # why a placeholder stage cannot run yet
    needs_masks: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    min_batch_size: int = 1  # a stage whose objective pairs the samples of a micro-batch needs more than one

    def check_implemented(self) -> None:
        if self.unavailable is not None:
            raise NotImplementedError(f"training stage {self.name!r} ({self.title}) is not implemented yet: "
                                      f"{self.unavailable}. Use stage1_noisy or stage2_finetune.")


STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


# Stage I, thesis §5.4.1, Eq. 5.2: the reference embedding is diffused with the latents' schedule (official
# ``noisy_training`` with t' = t for t < 900 else 999 - t); the thesis drops 10 % of the references.
register(Stage(
    name="stage1_noisy",
    title="v1 Stage I: noisy training",
    version="mult",
    trainable=("unet", "sketch_encoder"),
    defaults={"objective": {"noisy_reference": True, "reference_drop": 0.1}},
))

# Stage II, thesis §5.4.2, Eq. 5.3: clean reference embeddings, 50 % reference drop (also the official mult
# training config's ``ucg_rate``), a short fine-tuning run.
register(Stage(
    name="stage2_finetune",
    title="v1 Stage II: short fine-tuning",
    version="mult",
    trainable=("unet", "sketch_encoder"),
    defaults={"objective": {"noisy_reference": False, "reference_drop": 0.5}},
))

# v1.5, thesis §5.5 / official DualMaskTrainer (refnet/models/trainer/mask.py:25-164): only the split fg/bg LoRA, the background ("recovery")
# transformer and the threshold embedder train; the U-Net base and the sketch encoder stay frozen; th_s, th_r ~
# U[0.05, 0.95] per sample; masks (smask = rmask = the ground truth's mask, as QuartLoader) come from the data.
# The official trainer's reference-drop rate for this stage is not released: 0.1 here keeps the LoRA'd model
# usable with CFG (its unconditional input is an all-zero 2N-token context) while training mostly conditional.
# No noisy reference (the v1 Stage I device) — the base is already trained.
register(Stage(
    name="switch_fgbg",
    title="v1.5 foreground/background split (LoRA + recovery transformer + threshold embedder)",
    version="switch",
    trainable=("unet.lora", "recovery_transformer", "thresh_embedder"),
    defaults={"objective": {"noisy_reference": False, "reference_drop": 0.1, "threshold_range": [0.05, 0.95]}},
    needs_masks=True,
))

# v2, thesis §5.6.1 (Eq. 5.5); the official v2 trainer is not released, what is inferred is listed in
# colorize/families/v2/training.py. Stage 2: background encoder + its injection (warp) modules + decoder split
# LoRA; stage 3: style encoder + its injection (style) modules, the background branch frozen and active for 50 %
# of the samples. Both: 50 % reference drop (thesis), v-prediction (the released v2 is v-parameterised).
register(Stage(
    name="v2_background",
    title="v2 stage 2: background encoder + background injection + split LoRA",
    version="v2",
    trainable=("bg_encoder", "unet.warp", "unet.lora"),
    defaults={"objective": {"noisy_reference": False, "reference_drop": 0.5, "prediction": "v"}},
    needs_masks=True,
))
register(Stage(
    name="v2_style",
    title="v2 stage 3: style encoder + style injection (background branch active 50 %)",
    version="v2",
    trainable=("style_encoder", "unet.style"),
    defaults={"objective": {"noisy_reference": False, "reference_drop": 0.5, "prediction": "v",
                            "background_p": 0.5}},
    needs_masks=True,
    model_options={"style": True},
))


# ColorizeDiffusion XL (official refnet/models/trainer/sdxl.py and configs/training/sdxl-{base,adapter}.yaml at
# commit ec78784; what is inferred is listed in colorize/families/xl/training.py). Common: v-prediction, 20 %
# reference drop (ucg_rate), each of the four sketch hints dropped at 10 % (control_drop), offset noise 0.05,
# reference inpainting at 10 % (inpaint_p), mask thresholds th_s, th_r ~ U[0.05, 0.99], masks required
# (smask_required), the aspect buckets around 1024² (crop_size) with the official aspect-ratio batching
# (AspectRatioSampler: batches of one orientation, the bucket that fits them; the crop covers the bucket), AdamW at
# the official default 5e-6.
_XL_OBJECTIVE = {"prediction": "v", "noisy_reference": False, "reference_drop": 0.2, "sketch_drop": 0.0,
                 "hint_drop": [0.1, 0.1, 0.1, 0.1], "offset_noise": 0.05, "inpaint_p": 0.1, "inpaint_offset": 4,
                 "threshold_range": [0.05, 0.99]}
_XL_DEFAULTS = {"augment": {"buckets": [list(b) for b in XL_BUCKETS], "aspect_buckets": True, "resize_mode": "cover",
                            "load_size": None, "scale_range": [1.0, 1.0], "reference_size": 448},
                "optim": {"lr": 5e-6}}

# Base stage (GramTrainer, stage 0): the U-Net, the sketch encoder and ClusterConcat train; the Gram-matrix loss on
# the outputs of transformer blocks 23 and 63 (weight 1, MSE) from epoch 2 (gram_start_epoch).
register(Stage(
    name="xl_base",
    title="XL base: U-Net + sketch encoder + ClusterConcat, Gram-matrix loss",
    version="sdxl",
    trainable=("unet", "sketch_encoder", "proj"),
    defaults={**_XL_DEFAULTS, "objective": {**_XL_OBJECTIVE, "gram_weight": 1.0, "gram_blocks": [23, 63],
                                            "gram_start_epoch": 2.0}},
    needs_masks=True,
))
# Adapter stage 1 (ColorizerXLTrainer stage 1 inputs, no ReferenceNet): the background LoRA on every attn2
# q/k/v, over [reference | background] context with the soft split; everything else frozen.
register(Stage(
    name="xl_adapter_stage1",
    title="XL v2 adapter stage 1: background LoRA on the split cross-attention",
    version="xlv2",
    trainable=("unet.lora",),
    defaults={**_XL_DEFAULTS, "objective": dict(_XL_OBJECTIVE)},
    needs_masks=True,
    model_options={"separation": "split"},
))
# Adapter stage 2 (ColorizerXLTrainer stage 2): the ReferenceNet background encoder and the background LoRA;
# the U-Net decoder reads the ReferenceNet's bank.
register(Stage(
    name="xl_adapter_stage2",
    title="XL v2 adapter stage 2: ReferenceNet background encoder + background LoRA",
    version="xlv2",
    trainable=("bg_encoder", "unet.lora"),
    # the ReferenceNet's blocks after its last bank block never reach the loss: DDP must allow unused parameters
    defaults={**_XL_DEFAULTS, "objective": dict(_XL_OBJECTIVE), "run": {"find_unused_parameters": True}},
    needs_masks=True,
    model_options={"separation": "bank"},
))


# The chapter-4 GAN (thesis §4.2-§4.3; no code or weights were released, every open choice is listed in
# training/gan/objective.py). Three stages, each started from the previous one's export (model.init):
# gan_tagger fine-tunes the ImageNet ResNet-34 as a multi-label tagger (§4.2.1, BCE + focal, Eq. 4.1-4.2);
# gan_stage1 trains the generator and the patch discriminator against the frozen tagger's φ(r) (§4.2.2,
# Eq. 4.3-4.7); gan_stage2 trains only the tag mapper (φ and ω) against the frozen encoder and generator
# (§4.3, Eq. 4.10-4.18). References are the ground truth deformed by H (§3.1, Fig. 4.2, Eq. 4.7): a horizontal
# flip half of the time and a TPS warp (training.augment); no rotation (the alternative §3.1 also names) and no
# colour jitter (it would change the colours the L1 target keeps). No sketch border blanking (the DM's
# outpainting device, §3.2; the alternative "sides"). The reference is resized to GANConfig.reference_size.
_GAN_AUGMENT: dict[str, Any] = {"buckets": [[256, 256]], "load_size": None, "scale_range": [1.0, 1.3],
                                "border_mode": "none", "reference_flip_p": 0.5, "tps_p": 1.0, "tps_strength": 0.1}
# Adam without weight decay, no clipping; stage 1 takes pix2pix's lr 2e-4 and betas (0.5, 0.999) for G and D.
_GAN_OPTIM: dict[str, Any] = {"lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0, "max_grad_norm": None}
register(Stage(
    name="gan_tagger",
    title="GAN reference encoder: ResNet-34 multi-label tag classification (BCE + focal)",
    version="gan",
    trainable=("tag_encoder",),
    # the tagger sees the (flipped) reference only; fine-tuning lr 1e-4 with Adam's usual betas
    defaults={"augment": {**_GAN_AUGMENT, "tps_p": 0.0}, "optim": {**_GAN_OPTIM, "lr": 1e-4, "betas": [0.9, 0.999]}},
))
register(Stage(
    name="gan_stage1",
    title="GAN stage 1: generator + patch discriminator (cGAN + L1 + TV), frozen tag encoder",
    version="gan",
    trainable=("generator", "discriminator"),
    defaults={"augment": dict(_GAN_AUGMENT), "optim": dict(_GAN_OPTIM)},
))
register(Stage(
    name="gan_stage2",
    title="GAN stage 2: tag mapper (L_hybrid + L_inv), frozen tag encoder and generator",
    version="gan",
    trainable=("tag_mapper",),
    # not adversarial: Adam's usual betas; the anchor of each sample is another sample of its micro-batch
    defaults={"augment": dict(_GAN_AUGMENT), "optim": {**_GAN_OPTIM, "lr": 1e-4, "betas": [0.9, 0.999]}},
    min_batch_size=2,
))


def get_stage(name: str) -> Stage:
    """The registered stage ``name``; placeholders raise :class:`NotImplementedError` saying why."""
    if name not in STAGES:
        raise ValueError(f"unknown training stage {name!r}; known: {', '.join(STAGES)}")
    stage = STAGES[name]
    stage.check_implemented()
    return stage


def apply_trainable(stage: Stage, groups: dict[str, nn.Module]) -> list[nn.Parameter]:
    """Freeze every group, then unfreeze the stage's; returns the trainable parameters (the optimiser's).

    Frozen groups are also put in eval mode for good (their ``train()`` is not called again by the loop).
    """
    stage.check_implemented()
    missing = [g for g in stage.trainable if g not in groups]
    if missing:
        raise ValueError(f"stage {stage.name} trains {missing}, which this model does not have")
    bad = [g for g in stage.trainable if g in FROZEN_GROUPS]
    if bad:
        raise ValueError(f"stage {stage.name} may not train frozen groups {bad}")
    for module in groups.values():
        module.requires_grad_(False)
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for g in stage.trainable:
        groups[g].requires_grad_(True)
        for p in groups[g].parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    for g in FROZEN_GROUPS:
        if g in groups:
            groups[g].eval()
    return params
