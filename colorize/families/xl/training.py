"""The model of the ColorizeDiffusion XL training stages: the base stage with the Gram-matrix loss and the xlv2
adapter stages. The training loop (``training/``) supplies the data, the noise, the frozen VAE and reference
encoders and the diffusion loss; this module knows what the XL model is and what it reads.

Facts from the official repository tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``
(``refnet/models/trainer/sdxl.py``, ``refnet/models/trainer/trainer.py``, ``refnet/gram_hook.py``,
``configs/training/sdxl-{base,adapter}.yaml``, ``refnet/util.py``):

* **Inputs** (``sdxl.py:136-280``): the reference goes through the frozen CLIP-bigG (all 257 projected tokens) and
  the frozen WD tagger (14×14 features), then through the *trainable* ClusterConcat ``proj``; the reference drop
  (``ucg_rate`` 0.2) zeroes the projected context (``trainer.py:147-153``). The sketch encoder's four hints are each
  dropped per sample (``control_drop`` [0.1, 0.1, 0.1, 0.1], ``sdxl.py:226``). The adm vector ``y`` is the
  256-wide sinusoid of √(h·w), the crop's size in pixels of the original image (``sdxl.py:155-161``), and of the
  image list's aesthetic score (the loader gives 6 to unscored images; inference embeds 7.0).
* **Inpainting** (``sdxl.py:179-187``, ``inpaint_p`` 0.1): the reference of a chosen sample is painted white where
  the reference mask of the sample ``inpaint_offset`` (4) places earlier in the micro-batch reaches ``th_r`` — a
  random character-shaped hole. ``th_s, th_r ~ U[0.05, 0.99]`` (``thresh_min`` 0.05, ``thresh_max`` 0.99).
* **Gram loss** (``GramTrainer``, ``sdxl.py:478-546``; ``gram_hook.py``): from ``gram_start_epoch`` (2) on, a
  second U-Net pass with the context rolled by one sample over the batch (another sample's reference, same noisy
  latent and hints); the outputs of transformer blocks 23 and 63 (counted from 1 over the U-Net's cross-attention
  blocks: the ninth block of input block 8 and of output block 2, both at level 2; a block's output is its
  feed-forward residual, ``gram_type`` "ff") are turned into
  token×token Gram matrices (``apply_norm``: L2 over channels; ``apply_dist_norm``, off in the config: mean/std over
  tokens) and the second pass's must match the first's (detached), MSE, weight 1. The loss is zero for a
  micro-batch of one (the roll is the identity). No mask weighting (``mask_weight`` false).
* **Adapter stages** (``ColorizerXLTrainer`` ``stage`` > 0, ``sdxl.py:94-126, 195-270``): the U-Net, the sketch
  encoder and ``proj`` are frozen. "Background bleaching" (``refnet/util.py:187-205``): the sketch loses its lines
  where the sketch mask is at most ``th_s``, the background reference is the reference with the character
  (reference mask above ``th_r``) painted white; the context is ``[reference | background]`` (both through
  ``proj``), the sketch mask reaches the U-Net bicubic-resized ×1/8. Stage 2 runs the ReferenceNet on
  ``[VAE latent of the background reference resized to the crop | sketch mask nearest ×1/8 | reference mask
  bicubic to the latent grid]`` at t = 0 with the four sinusoids of the crop ``[top, left, h, w]``, and the U-Net
  decoder reads its bank (:mod:`.bank`); the cross-attention is the soft blend with the background LoRA.

The XL paper ("Towards High-resolution and Disentangled Reference-based Sketch Colorization", CVPR 2026) was not
available when this was written: everything here follows the released training code; where the paper describes
another recipe, that difference has not been checked.

Where this differs from the official code, and why:

* The released configs do not say which modules stage 1 trains for xlv2: the code trains the "foreground" LoRA
  layers, ``conv_fg`` and a foreground encoder (``sdxl.py:103-109``), none of which the released xlv2 has (its only
  LoRA is the background one, ``conv_fg`` never receives an input in this trainer, no foreground encoder). Stage 1
  here trains the background LoRA on the stage-1 inputs (bleaching, doubled context, soft split attention, no
  ReferenceNet), so that stage 2 starts from a LoRA adapted to the split; ``conv_fg`` stays zero.
* The background latent is the VAE posterior mean (the official samples it); ``p_white_bg`` (0 in the official
  configs) is not offered. The official adm size uses the original image's *height* ratio for both sides
  (``sdxl.py:159``); here each side uses its own resize ratio (equal up to rounding, the resize keeps the aspect).
* The ``BackgroundTrainer`` (a ReferenceNet reading the noisy latent, 10 input channels) and ``ForegroundTrainer``
  (foreground encoder and map modules) variants build layouts no released file has; they are not provided.
* A start from SDXL 1.0 base (the official ``-fm`` fitting, ``refnet/util.py:88-134``): every tensor of the same
  shape is taken; ``label_emb.0.0`` (2816 → 512 inputs) takes the first 512 input columns, as the official
  fitting rule gives; the sketch encoder is new with zero output projections (``encoder.py:108-119``) and ``proj``
  is new. A ReferenceNet without weights starts as a copy of the U-Net (the mask input channels and its adm input
  new), our choice: the official initialisation of ``bg_encoder`` is not released.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.config import ColorizerConfig, SketchEncoderConfig
from colorize.errors import InputError
from colorize.families.base import TrainingStart
from colorize.families.xl.bank import xlv2_patches
from colorize.families.xl.conditioning import ClusterConcat, ClusterConcatConfig, infer_cluster_concat_config
from colorize.families.xl.reference_net import (
    BACKGROUND_LORA_RANK,
    ReferenceNet,
    build_reference_net,
    build_xlv2_unet,
    reference_net_config,
)
from colorize.families.xl.sizes import XL_VAE_SCALE
from colorize.families.xl.sketch_encoder import (
    MultiScaleAttentionEncoder,
    MultiScaleEncoderConfig,
    infer_sketch_encoder_config,
)
from colorize.families.xl.split_attention import BackgroundLoraLinear
from colorize.families.xl.unet import ADM_SINUSOID_WIDTH, AESTHETIC_SCORE, build_xl_unet
from colorize.models.attention import BasicTransformerBlock
from colorize.models.unet import DualCondUNet, timestep_embedding
from colorize.models.vae import AutoencoderKL

Autocast = Callable[[], Any]
#: The official Gram blocks (``configs/training/sdxl-base.yaml`` ``gram_ids``), counted from 1.
GRAM_BLOCKS = (23, 63)
#: The official mask thresholds ``thresh_min`` / ``thresh_max`` of the XL trainer.
XL_THRESHOLD_RANGE = (0.05, 0.99)
#: Released ClusterConcat input widths: CLIP-bigG's projection and the WD SwinV2 tagger's features.
FULL_PROJ_INPUTS = (1280, 1024)


# ---------------------------------------------------------------------------------------------- Gram loss
@dataclass(frozen=True)
class GramSettings:
    """The Gram loss of one micro-batch: whether it is on yet, its weight, the 1-based transformer blocks and the
    normalisation."""

    active: bool
    weight: float
    blocks: tuple[int, ...] = GRAM_BLOCKS
    token_norm: bool = False
    channel_norm: bool = True


def gram_matrix(features: Tensor, token_norm: bool = False, channel_norm: bool = True) -> Tensor:
    """(b, n, c) block output → (b, n, n) token Gram matrix (official ``GramHooker.gram_matrix``): optionally
    standardised over tokens (``token_norm``, eps 1e-6 on the std), L2-normalised over channels (``channel_norm``)."""
    x = features.float()
    if token_norm:
        x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)
    if channel_norm:
        x = F.normalize(x, dim=-1)
    return x @ x.transpose(-1, -2)


def transformer_blocks(unet: nn.Module) -> list[BasicTransformerBlock]:
    """The U-Net's cross-attention transformer blocks in the official order (input, middle, output blocks; 70 in
    the XL U-Net): what the official Gram hook counts."""
    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


@contextmanager
def recorded_outputs(blocks: Sequence[nn.Module], indices: Sequence[int]) -> Iterator[dict[int, Tensor]]:
    """The outputs of ``blocks[i]`` for ``i`` in ``indices`` (0-based) during the ``with`` body, by index (a block
    run twice keeps its last output). The hooks exist only inside the ``with``."""
    found: dict[int, Tensor] = {}
    handles = []
    for i in indices:
        def hook(_module: nn.Module, _args: Any, output: Tensor, i: int = i) -> None:
            found[i] = output
        handles.append(blocks[i].register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------- inputs
def adm_rows(sizes: Tensor, scores: Tensor) -> Tensor:
    """The adm vector of each sample (b, 512): sinusoids of √(h·w) (``sizes`` (b, 2) in pixels of the original
    image, floored as the official ``.to(torch.int)``) and of the aesthetic score (b,)."""
    hw = sizes.float().floor()
    side = (hw[:, 0] * hw[:, 1]).sqrt()
    return torch.cat([timestep_embedding(side, ADM_SINUSOID_WIDTH),
                      timestep_embedding(scores.float(), ADM_SINUSOID_WIDTH)], dim=1)


def crop_adm(crops: Tensor) -> Tensor:
    """The ReferenceNet's adm of each sample (b, 1024): sinusoids of ``[top, left, h, w]`` (b, 4)."""
    return torch.cat([timestep_embedding(crops[:, i].float(), ADM_SINUSOID_WIDTH) for i in range(4)], dim=1)


def inpainted_reference(reference: Tensor, reference_mask: Tensor, th_r: Tensor, chosen: Tensor,
                        offset: int) -> Tensor:
    """The chosen samples' references painted white where the reference mask of the sample ``offset`` places
    earlier in the batch reaches their ``th_r`` (official ``sdxl.py:179-187``)."""
    holes = reference_mask.roll(offset, 0) >= th_r.view(-1, 1, 1, 1)
    paint = holes & (chosen.view(-1, 1, 1, 1) > 0)
    return torch.where(paint, torch.ones_like(reference), reference)


def background_reference(reference: Tensor, reference_mask: Tensor, th_r: Tensor) -> Tensor:
    """The reference with the character (reference mask above ``th_r``) painted white (``background_bleaching``)."""
    return torch.where(reference_mask <= th_r.view(-1, 1, 1, 1), reference, torch.ones_like(reference))


def gram_settings(objective: Any, progress: Any) -> GramSettings | None:
    """The Gram loss of this micro-batch (``None`` when ``gram_weight`` is 0): active from ``gram_start_step`` or
    ``gram_start_epoch``, whichever is reached first (neither given: from the first step)."""
    if objective is None or objective.gram_weight <= 0:
        return None
    step, epoch = objective.gram_start_step, objective.gram_start_epoch
    active = (step is None and epoch is None) or (step is not None and progress.step >= step) or \
        (epoch is not None and progress.epoch >= epoch)
    return GramSettings(bool(active), float(objective.gram_weight), tuple(objective.gram_blocks),
                        bool(objective.gram_token_norm), bool(objective.gram_channel_norm))


# ---------------------------------------------------------------------------------------------- the model
class XLDenoiser(nn.Module):
    """The XL model a stage trains or reads (attribute names = checkpoint components): U-Net, sketch encoder,
    ClusterConcat ``proj`` and, for xlv2, the ReferenceNet ``bg_encoder``."""

    def __init__(self, unet: DualCondUNet, sketch_encoder: MultiScaleAttentionEncoder, proj: ClusterConcat,
                 bg_encoder: ReferenceNet | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.sketch_encoder = sketch_encoder
        self.proj = proj
        if bg_encoder is not None:
            self.bg_encoder = bg_encoder

    @property
    def reference_net(self) -> ReferenceNet | None:
        return getattr(self, "bg_encoder", None)

    def groups(self) -> dict[str, nn.Module]:
        """Stage groups; ``unet.lora`` (the background LoRA pairs) shares its parameters with ``unet``."""
        out: dict[str, nn.Module] = {"unet": self.unet, "sketch_encoder": self.sketch_encoder, "proj": self.proj,
                                     "unet.lora": background_lora_pairs(self.unet)}
        if self.reference_net is not None:
            out["bg_encoder"] = self.reference_net
        return out

    # ------------------------------------------------------------------ what a micro-batch gives the model
    def training_inputs(self, batch: Mapping[str, Tensor], latent: Tensor, encoders: Any, autocast: Autocast, *,
                        objective: Any = None, progress: Any = None, separation: str = "none",
                        **options: Any) -> tuple[Tensor, dict[str, Any]]:
        """``(CLIP tokens, forward arguments)`` of a micro-batch: the frozen CLIP / tagger encodes of the
        (inpainted) reference, the adm rows, the drops and, with ``separation`` "split" (adapter stage 1) or "bank"
        (stage 2), the background inputs."""
        reference = batch["reference"]
        rmask, th_r = batch.get("reference_mask"), batch.get("th_r")
        if objective is not None and objective.inpaint_p > 0 and rmask is not None and th_r is not None:
            reference = inpainted_reference(reference, rmask, th_r, batch["inpaint"], objective.inpaint_offset)
        images = reference
        if separation != "none":
            if rmask is None or th_r is None or "mask" not in batch:
                raise InputError("the XL adapter stages need masks (stage needs_masks): the batch has none")
            images = torch.cat([reference, background_reference(reference, rmask, th_r)])
        with torch.no_grad(), autocast():
            clip = encoders.clip.clip.reference_tokens(images).float()
            wd = encoders.clip.tagger.features(images).float()
        kwargs: dict[str, Any] = {"y": adm_rows(batch["size"], batch["score"]), "ref_keep": batch["ref_keep"],
                                  "hint_keep": batch.get("hint_keep"), "gram": gram_settings(objective, progress)}
        if separation == "none":
            kwargs["wd_tokens"] = wd
            return clip, kwargs
        n = reference.shape[0]
        smask = batch["mask"].float()
        kwargs.update(wd_tokens=wd[:n], bg_clip=clip[n:], bg_wd=wd[n:], sketch_region=smask > batch["th_s"].view(-1, 1, 1, 1),
                      mask=F.interpolate(smask, size=tuple(latent.shape[-2:]), mode="bicubic"))
        if separation == "bank":
            bg_reference = images[n:]
            with torch.no_grad(), autocast():
                z_bg = encoders.latents(F.interpolate(bg_reference, size=tuple(batch["color"].shape[-2:]),
                                                      mode="bicubic"))
            kwargs["bank_input"] = torch.cat([
                z_bg.float(), F.interpolate(smask, size=tuple(z_bg.shape[-2:])),
                F.interpolate(rmask.float(), size=tuple(z_bg.shape[-2:]), mode="bicubic")], dim=1)
            kwargs["bank_adm"] = crop_adm(batch["crop"])
        elif separation != "split":
            raise ValueError(f"unknown XL separation {separation!r} (none, split, bank)")
        return clip[:n], kwargs

    def preview_encoder(self, encoder: Any, image: Tensor) -> Tensor:
        """Reference images → the ClusterConcat context (sample previews)."""
        dev = next(self.proj.parameters()).device
        image = image.to(dev)
        return self.proj(encoder.clip.reference_tokens(image), encoder.tagger.features(image))

    def preview_inputs(self, tokens: Tensor, batch: Mapping[str, Tensor], encode_tokens: Callable[[Tensor], Tensor],
                       latent_factor: int) -> tuple[Tensor, Any, dict[str, Any]]:
        """Previews run the plain path at the batch's size with the inference score (7.0)."""
        h, w = batch["sketch"].shape[-2:]
        y = adm_rows(torch.tensor([[float(h), float(w)]]), torch.tensor([AESTHETIC_SCORE])).to(tokens.device)
        return tokens, None, {"y": y}

    # ------------------------------------------------------------------ forward
    def forward(
        self, x_t: Tensor, t: Tensor, context: Tensor, sketch: Tensor, *, wd_tokens: Tensor, y: Tensor,
        ref_keep: Tensor | None = None, hint_keep: Tensor | None = None, gram: GramSettings | None = None,
        bg_clip: Tensor | None = None, bg_wd: Tensor | None = None, sketch_region: Tensor | None = None,
        mask: Tensor | None = None, bank_input: Tensor | None = None, bank_adm: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The prediction for ``x_t``; with ``gram`` also ``{"gram_loss": weighted loss}`` (0 before the loss starts;
        once active a second U-Net pass).

        ``context`` are the reference's CLIP tokens and ``wd_tokens`` its tagger features (``proj`` fuses them);
        ``ref_keep`` (b,) zeroes the whole projected context of dropped samples, ``hint_keep`` (b, hints) each
        hint. Adapter stages: ``bg_clip`` / ``bg_wd`` of the background reference, ``sketch_region`` (b, 1, H, W)
        where the sketch keeps its lines, the latent sketch ``mask``, and for stage 2 the ReferenceNet's input and
        adm."""
        if sketch_region is not None:
            sketch = torch.where(sketch_region, sketch, -torch.ones_like(sketch))
        hints = self.sketch_encoder(sketch)
        if hint_keep is not None and hint_keep.numel():
            hints = [h * hint_keep[:, i].to(h.dtype).view(-1, 1, 1, 1) for i, h in enumerate(hints)]
        c = self.proj(context, wd_tokens)
        if bg_clip is not None:
            c = torch.cat([c, self.proj(bg_clip, bg_wd)], dim=1)
        if ref_keep is not None:
            c = c * ref_keep.to(c.dtype).view(-1, 1, 1)
        patches = None
        if mask is not None:
            bank = None
            if bank_input is not None:
                refnet = self.reference_net
                if refnet is None:
                    raise ValueError("a ReferenceNet input was given, but this model has no bg_encoder")
                bank = refnet(bank_input, torch.zeros(bank_input.shape[0], device=bank_input.device), bank_adm)
            patches = xlv2_patches(bank, mask, lora="delta")
        if gram is None:
            return self.unet(x_t, t, c, hints, patches, y)
        if not gram.active:
            pred = self.unet(x_t, t, c, hints, patches, y)
            return pred, {"gram_loss": torch.zeros((), device=pred.device)}
        blocks = transformer_blocks(self.unet)
        indices = [b - 1 for b in gram.blocks]
        with recorded_outputs(blocks, indices) as first:
            pred = self.unet(x_t, t, c, hints, patches, y)
        anchors = {i: gram_matrix(first[i], gram.token_norm, gram.channel_norm).detach() for i in indices}
        with recorded_outputs(blocks, indices) as rolled:
            self.unet(x_t, t, c.roll(1, 0), hints, patches, y)
        loss = sum(F.mse_loss(gram_matrix(rolled[i], gram.token_norm, gram.channel_norm), anchors[i])
                   for i in indices)
        return pred, {"gram_loss": gram.weight * loss}  # type: ignore[dict-item]


def background_lora_pairs(unet: nn.Module) -> nn.ModuleList:
    """The background LoRA pairs (``lora_down_background`` / ``lora_up_background``) of every projection that has
    them (none in an sdxl U-Net)."""
    pairs = nn.ModuleList()
    for m in unet.modules():
        if isinstance(m, BackgroundLoraLinear):
            pairs.append(m.lora_down_background)
            pairs.append(m.lora_up_background)
    return pairs


# ---------------------------------------------------------------------------------------------- building
def fit_tensor(old: Tensor, shape: Sequence[int]) -> Tensor:
    """The official fitting rule (``refnet/util.py:88-134``) for a tensor whose first two axes changed size:
    index ``[i mod old_0, j mod old_1]``, divided by how many new columns read each old column."""
    if tuple(old.shape) == tuple(shape):
        return old
    if len(shape) != old.ndim or tuple(shape[2:]) != tuple(old.shape[2:]):
        raise ValueError(f"cannot fit a {tuple(old.shape)} tensor to {tuple(shape)}")
    rows = torch.arange(shape[0]) % old.shape[0]
    if len(shape) == 1:
        return old[rows].clone()
    cols = torch.arange(shape[1]) % old.shape[1]
    uses = torch.bincount(cols, minlength=old.shape[1])[cols].to(old.dtype)
    new = old[rows[:, None], cols[None, :]] / uses.view(1, -1, *([1] * (len(shape) - 2)))
    return new.contiguous()


def text_to_image_config(unet_sd: Mapping[str, Any], vae_sd: Mapping[str, Any] | None) -> ColorizerConfig | None:
    """The XL colorizer config that starts from an SDXL text-to-image U-Net (one with an adm input), or
    ``None`` for other U-Nets: the released sketch encoder and ClusterConcat widths, adm 512, hints after input
    blocks 0, 3, 6 and 8, the VAE at scale 0.13025."""
    if "label_emb.0.0.weight" not in unet_sd:
        return None
    from colorize.checkpoint.infer import infer_unet_config, infer_vae_config
    from colorize.families.xl import TINY_XL_EXTRAS, XL_EXTRAS_DEFAULTS

    unet = replace(infer_unet_config(unet_sd), adm_in_channels=512, hint_blocks=(0, 3, 6, 8))
    vae = replace(infer_vae_config(vae_sd), scale_factor=XL_VAE_SCALE) if vae_sd else None
    sketch = SketchEncoderConfig(model_channels=unet.model_channels, ch_mults=unet.channel_mult)
    # the released head widths at full size; a narrower (test) U-Net gets the tiny test models' ones
    extras = dict(XL_EXTRAS_DEFAULTS) if unet.model_channels == 320 else dict(TINY_XL_EXTRAS)
    cfg = ColorizerConfig(version="sdxl", parameterization="v", unet=unet, sketch=sketch,  # type: ignore[arg-type]
                          extras=extras)
    return replace(cfg, vae=vae) if vae is not None else cfg


def _load(module: nn.Module, sd: Mapping[str, Tensor], what: str, may_miss: Callable[[str], bool]) -> None:
    target = module.state_dict()
    fitted = {k: fit_tensor(v, target[k].shape) if k in target else v for k, v in sd.items()}
    missing, unexpected = module.load_state_dict(fitted, strict=False)
    missing = [k for k in missing if not may_miss(k)]
    if missing or unexpected:
        raise ValueError(f"{what}: weights do not match the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")


def _xlv2_only(key: str) -> bool:
    return key.startswith("conv_fg.") or "lora_down_background" in key or "lora_up_background" in key


def _proj_config(config: ColorizerConfig, sd: Mapping[str, Tensor] | None) -> ClusterConcatConfig:
    from colorize.families.xl import xl_extras
    from colorize.families.xl.encoders import TINY_XL_CLIP, TINY_XL_TAGGER

    extras = xl_extras(config)
    if sd:
        return infer_cluster_concat_config(sd, extras["token_length"], extras["proj_dim_head"])
    full = config.unet.model_channels == 320
    clip_dim, wd_dim = FULL_PROJ_INPUTS if full else (TINY_XL_CLIP.projection_dim, TINY_XL_TAGGER.num_features)
    return ClusterConcatConfig(clip_dim, wd_dim, config.unet.context_dim, extras["token_length"],
                               extras["proj_dim_head"])


def reference_net_from_unet(refnet: ReferenceNet, unet_sd: Mapping[str, Tensor]) -> None:
    """Start a ReferenceNet as a copy of the U-Net: every tensor of the same name and shape; the input conv's
    latent channels copied and its two mask channels zero; its adm input keeps its fresh initialisation."""
    own = refnet.state_dict()
    take = {k: v for k, v in unet_sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
            and not k.startswith("label_emb.0.0.")}
    w = own["input_blocks.0.0.weight"].clone()
    src = unet_sd["input_blocks.0.0.weight"]
    w.zero_()
    w[:, : src.shape[1]] = src
    take["input_blocks.0.0.weight"] = w
    refnet.load_state_dict(take, strict=False)


def build_training_model(family_name: str, start: TrainingStart) -> tuple[ColorizerConfig, XLDenoiser, nn.Module]:
    """``(export config, XLDenoiser, VAE)`` in float32 for an ``sdxl`` or ``xlv2`` stage, from ``start``: an XL or
    xlv2 file, an SDXL text-to-image checkpoint (fitted, see the module docstring), or random (tests)."""
    parts, gc = start.parts, start.gradient_checkpointing
    extras_default = dict(start.config.extras) if start.config.version in ("sdxl", "xlv2") else {}
    config = replace(start.config, version=family_name, parameterization=start.prediction,  # type: ignore[arg-type]
                     extras=extras_default or start.config.extras)
    torch.manual_seed(start.init_seed)
    with torch.device(start.device if not parts.get("unet") else "cpu"):
        unet = build_xlv2_unet(config.unet, lora_rank=BACKGROUND_LORA_RANK) if family_name == "xlv2" \
            else build_xl_unet(config.unet)
        vae = AutoencoderKL(config.vae)
        sketch_cfg = MultiScaleEncoderConfig(config.sketch.in_ch, config.sketch.model_channels,
                                             config.sketch.ch_mults,
                                             dim_head=int(config.extras.get("sketch_dim_head", 128)))
        if start.has_sketch:
            sketch_cfg = infer_sketch_encoder_config(parts["sketch_encoder"], dim_head=sketch_cfg.dim_head)
        sketch = MultiScaleAttentionEncoder(sketch_cfg)
        proj = ClusterConcat(_proj_config(config, parts.get("proj")))
        refnet = build_reference_net(reference_net_config(config.unet)) if family_name == "xlv2" else None
    if hasattr(unet, "conv_fg"):
        nn.init.zeros_(unet.conv_fg.weight)
        nn.init.zeros_(unet.conv_fg.bias)
    if parts.get("unet"):
        _load(unet, parts["unet"], f"{start.name} (U-Net)", _xlv2_only)
    if parts.get("vae"):
        _load(vae, parts["vae"], f"{start.name} (VAE)", lambda k: False)
    if start.has_sketch:
        _load(sketch, parts["sketch_encoder"], f"{start.name} (sketch encoder)", lambda k: False)
    else:
        for conv in sketch.proj_outs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
    if parts.get("proj"):
        _load(proj, parts["proj"], f"{start.name} (ClusterConcat)", lambda k: False)
    if refnet is not None:
        if parts.get("bg_encoder"):
            _load(refnet, parts["bg_encoder"], f"{start.name} (ReferenceNet)", lambda k: False)
        elif parts.get("unet"):
            reference_net_from_unet(refnet, parts["unet"])
        else:
            reference_net_from_unet(refnet, unet.state_dict())
        refnet.use_checkpoint = gc
    unet.use_checkpoint = gc
    denoiser = XLDenoiser(unet, sketch, proj, refnet).to(start.device, torch.float32)  # type: ignore[arg-type]
    return config, denoiser, vae


def training_reference_encoder(denoiser: XLDenoiser, clip: str | None, tagger: str | None,
                               device: str | torch.device, allow_random: bool = False) -> nn.Module:
    """The frozen CLIP-bigG + tagger of an XL run: from their files (checked against ``proj``); without files,
    random encoders of ``proj``'s widths with a warning — the tiny test widths always, the released widths only
    with ``allow_random`` (benchmarks)."""
    from colorize.families.xl.clip_bigg import ClipVisionConfig, ClipVisionTower
    from colorize.families.xl.encoders import (
        TINY_XL_CLIP,
        TINY_XL_TAGGER,
        XLReferenceEncoder,
        check_encoder_fits,
        load_xl_reference_encoder,
    )
    from colorize.families.xl.tagger import SwinV2Tagger, TaggerConfig

    cfg = denoiser.proj.cfg
    if clip and tagger:
        enc = load_xl_reference_encoder(clip, tagger)
        check_encoder_fits(enc, denoiser.proj, "the model's ClusterConcat")
        return enc
    tiny = (cfg.input_dim, cfg.c_dim) == (TINY_XL_CLIP.projection_dim, TINY_XL_TAGGER.num_features)
    if clip or tagger or not (tiny or allow_random):
        raise InputError("XL training needs both frozen reference encoders: set model.clip to the CLIP ViT-bigG-14 "
                         "vision file (clip_vision_g.safetensors) and model.tagger to wd-v1-4-swinv2-tagger-v2 "
                         "(python -m colorize download clip-vit-bigg-14-vision wd-v1-4-swinv2-tagger-v2)")
    warnings.warn("no CLIP-bigG / tagger files given (model.clip, model.tagger): the XL reference encoders are "
                  "random; only useful for tests and benchmarks", stacklevel=2)
    clip_cfg, tagger_cfg = (TINY_XL_CLIP, TINY_XL_TAGGER) if tiny else (ClipVisionConfig(), TaggerConfig())
    with torch.device(device):
        return XLReferenceEncoder(ClipVisionTower(clip_cfg), SwinV2Tagger(tagger_cfg))


__all__ = [
    "GRAM_BLOCKS",
    "GramSettings",
    "XLDenoiser",
    "XL_THRESHOLD_RANGE",
    "adm_rows",
    "background_lora_pairs",
    "background_reference",
    "build_training_model",
    "crop_adm",
    "fit_tensor",
    "gram_matrix",
    "gram_settings",
    "inpainted_reference",
    "recorded_outputs",
    "reference_net_from_unet",
    "text_to_image_config",
    "training_reference_encoder",
    "transformer_blocks",
]
