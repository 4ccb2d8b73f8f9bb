"""The xlv2 background encoder (``bg_encoder``, the official ``ReferenceNet``), its inputs, and the xlv2 U-Net.

Official facts (tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``):

* ``ReferenceNet`` (``refnet/modules/unet.py:403``) is the SDXL ``UNetModel`` with 6 input channels, a
  "sequential" adm input of 1024 values, ``disable_cross_attentions`` (its transformer blocks have ``attn1``,
  ``ff``, ``norm1``, ``norm3``: no ``attn2``, no ``norm2``) and ``discard_final_layers``: the decoder stops after
  the first block of level 0 and there is no ``out`` (2,012,561,920 parameters at full size). Its forward
  returns nothing; what matters is the bank its decoder transformer blocks record (:mod:`.bank`).
* Its input (``refnet/models/v2-colorizerXL.py:212-247``): the scaled VAE latent of the masked reference (the
  character, ``rmask ≥ threshold``, painted white) or of the background image, resized to the output size (H, W),
  then the sketch mask and the reference mask, each bicubic-resized to (H, W) and then nearest-resized by 1/8;
  t = 0; adm ``y`` = the four 256-wide sinusoids of ``[0, 0, crop_h, crop_w]`` (``get_crop_scale``,
  ``refnet/util.py:101-110``, of the output size and the reference / background image size).
* The xlv2 U-Net (``configs/inference/xlv2.yaml``) is the XL U-Net plus a rank-4 background LoRA on every
  ``attn2.to_q/to_k/to_v`` (``…lora_down_background.weight``, ``…lora_up_background.weight``) and an unused
  ``conv_fg`` (Conv2d(in_channels_fg 4, model_channels, 3), used only with a foreground encoder, absent from the
  config).

:class:`ReferenceNet` reuses the shared U-Net's input and middle blocks and time/adm embedding
(:class:`~colorize.models.unet.DualCondUNet`), with self-attention-only transformer blocks. Its forward returns the
:class:`~colorize.families.xl.bank.ReferenceBank`; nothing is stored on a module.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.config import UNetConfig
from colorize.families.xl.bank import BankComplete, BankRecorder, ReferenceBank
from colorize.families.xl.split_attention import BackgroundLoraLinear
from colorize.families.xl.unet import ADM_SINUSOID_WIDTH, XL_UNET, build_xl_unet
from colorize.models.attention import (
    AttentionPatches,
    AttentionSite,
    CrossAttention,
    FeedForward,
    SpatialTransformer,
)
from colorize.models.unet import DualCondUNet, ResBlock, timestep_embedding

#: ReferenceNet input channels: latent (4) + sketch mask + reference mask.
REFERENCE_NET_IN_CHANNELS = 6
#: ReferenceNet adm width: four 256-wide sinusoids.
REFERENCE_NET_ADM = 4 * ADM_SINUSOID_WIDTH
#: Rank of the xlv2 background LoRA (``configs/inference/xlv2.yaml`` ``lora_config``).
BACKGROUND_LORA_RANK = 4
#: Input channels of the xlv2 U-Net's (unused) ``conv_fg``.
CONV_FG_IN_CHANNELS = 4
#: Latent downsampling of the VAE (the masks are resized to the latent grid by this factor).
LATENT_FACTOR = 8


def reference_net_config(unet_cfg: UNetConfig = XL_UNET) -> UNetConfig:
    """The ReferenceNet's config from the XL U-Net's: 6 input channels and a 1024-value adm input, everything
    else (widths, levels, depths, heads, Linear projections) shared. (Its context width is unused.)"""
    return replace(unet_cfg, in_channels=REFERENCE_NET_IN_CHANNELS, adm_in_channels=REFERENCE_NET_ADM)


class SelfAttentionBlock(nn.Module):
    """A transformer block without cross-attention (official ``disable_cross_attn``): pre-LN self-attention and
    GEGLU feed-forward; keys ``attn1``, ``ff``, ``norm1``, ``norm3``."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None, patches: AttentionPatches | None = None,
                index: int = -1, depth: int = 0, grid: tuple[int, int] = (0, 0)) -> Tensor:
        x = x + self.attn1(self.norm1(x), None, patches, AttentionSite(index, depth, False, grid))
        return x + self.ff(self.norm3(x))


class SelfAttentionTransformer(SpatialTransformer):
    """A :class:`~colorize.models.attention.SpatialTransformer` of :class:`SelfAttentionBlock` (same norm,
    projections and forward; the context is ignored)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1, attn_index: int = -1,
                 linear: bool = False) -> None:
        nn.Module.__init__(self)
        inner = heads * dim_head
        self.attn_index = attn_index
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(SelfAttentionBlock(inner, heads, dim_head) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)


class ReferenceNet(DualCondUNet):
    """The xlv2 background encoder (see the module docstring). ``state_dict()`` keys equal the official
    ``bg_encoder.*`` keys without the prefix.

    ``bank_indices``: the transformer-block indices of its decoder, which are the indices of the U-Net decoder
    blocks that read them (36 at full size: 34–69)."""

    def __init__(self, cfg: UNetConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if cfg.adm_in_channels is None:
            raise ValueError("a ReferenceNet config needs adm_in_channels (1024 for ColorizeDiffusion XL)")
        super().__init__(cfg, None, device=device, dtype=dtype)
        del self.out  # official discard_final_layers: no output head
        self.bank_indices: tuple[int, ...] = tuple(
            m.attn_index + d for block in self.output_blocks for m in block
            if isinstance(m, SpatialTransformer) for d in range(len(m.transformer_blocks))
        )

    def _decoder_length(self) -> int:
        """The decoder up to and including the first block of level 0 (official ``discard_final_layers``)."""
        return (len(self.cfg.channel_mult) - 1) * (self.cfg.num_res_blocks + 1) + 1

    def _next_attention(self, channels: int, depth: int | None = None) -> SpatialTransformer:
        cfg, index = self.cfg, self.num_attention_blocks
        depth = cfg.level_depth(0) if depth is None else depth
        block = SelfAttentionTransformer(channels, channels // cfg.num_head_channels, cfg.num_head_channels, depth,
                                         index, linear=cfg.use_linear_in_transformer)
        self.num_attention_blocks += depth
        return block

    def _zero_init(self) -> None:
        for m in self.modules():
            layer = m.out_layers[3] if isinstance(m, ResBlock) else m.proj_out if isinstance(m, SpatialTransformer) \
                else None
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, timesteps: Tensor | None = None, y: Tensor | None = None  # type: ignore[override]
                ) -> ReferenceBank:
        """Encode ``x`` (b, 6, h, w) (:func:`reference_net_input`) at ``timesteps`` (default 0) with the adm
        ``y`` (b or 1, 1024) (:func:`reference_adm`); returns the decoder blocks' ``norm1`` outputs."""
        if timesteps is None:
            timesteps = torch.zeros(1, device=x.device)
        # a checkpointed training pass recomputes blocks in the backward pass, so it must not stop inside one
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        recorder = BankRecorder(self.bank_indices, stop_when_complete=not recompute)
        patches = AttentionPatches(self_attention=recorder)
        emb = self._embed(timesteps, x, y)
        try:
            h, skips = self._encode(x, emb, None, patches, None)
            self._decode(h, skips, emb, None, patches)
        except BankComplete:  # the last decoder block has stored: nothing after it changes the bank
            pass
        return recorder.bank()


def build_reference_net(cfg: UNetConfig | None = None, *, unet_cfg: UNetConfig = XL_UNET,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ReferenceNet:
    """The ReferenceNet of ``cfg`` (default: derived from ``unet_cfg`` by :func:`reference_net_config`);
    ``device="meta"`` builds it without memory."""
    return ReferenceNet(reference_net_config(unet_cfg) if cfg is None else cfg, device=device, dtype=dtype)


def add_background_lora(unet: DualCondUNet, rank: int = BACKGROUND_LORA_RANK) -> DualCondUNet:
    """Give every ``attn2`` of ``unet`` ``to_q/to_k/to_v`` projections with the background LoRA pair (the base
    weights are kept; the pairs start at zero ``up``, as trained LoRAs do before loading)."""
    for module in unet.modules():
        if isinstance(module, SpatialTransformer):
            for tb in module.transformer_blocks:
                attn = getattr(tb, "attn2", None)
                if attn is None or isinstance(attn.to_q, BackgroundLoraLinear):
                    continue
                for name in ("to_q", "to_k", "to_v"):
                    old: nn.Linear = getattr(attn, name)
                    new = BackgroundLoraLinear(old.in_features, old.out_features, rank).to(old.weight.device,
                                                                                           old.weight.dtype)
                    if old.weight.device.type != "meta":
                        with torch.no_grad():
                            new.weight.copy_(old.weight)
                        nn.init.zeros_(new.lora_up_background.weight)
                    setattr(attn, name, new)
    return unet


def build_xlv2_unet(cfg: UNetConfig = XL_UNET, *, lora_rank: int = BACKGROUND_LORA_RANK,
                    in_channels_fg: int | None = CONV_FG_IN_CHANNELS, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> DualCondUNet:
    """The xlv2 U-Net: the XL U-Net with the background LoRA on every ``attn2`` and the (unused) ``conv_fg``
    (``in_channels_fg=None``: none). Its keys equal the official xlv2 ``model.diffusion_model.*`` keys."""
    unet = add_background_lora(build_xl_unet(cfg, device=device, dtype=dtype), lora_rank)
    if in_channels_fg is not None:
        w = unet.input_blocks[0][0].weight
        unet.conv_fg = nn.Conv2d(in_channels_fg, cfg.model_channels, 3, padding=1, device=w.device, dtype=w.dtype)
    return unet


def crop_scale(height: float, width: float, ref_height: float, ref_width: float) -> tuple[float, float]:
    """The official ``get_crop_scale`` (``refnet/util.py:101-110``): the part of the reference (or background)
    image ``ref_height × ref_width`` that the output's aspect covers, ``(crop_h, crop_w)`` (one of them 1)."""
    if width / height > ref_width / ref_height:
        return (height / width) * (ref_width / ref_height), 1.0
    return 1.0, (width / height) * (ref_height / ref_width)


def reference_adm(crop_h: float, crop_w: float, batch: int = 1, device: torch.device | str | None = None,
                  embed_dim: int = ADM_SINUSOID_WIDTH) -> Tensor:
    """The ReferenceNet's adm ``y`` (batch, 4·256): the sinusoids ``[cos, sin]`` of ``[0, 0, crop_h, crop_w]``
    (the crop offsets are always 0), concatenated (float32)."""
    values = torch.tensor([0.0, 0.0, float(crop_h), float(crop_w)], dtype=torch.float32, device=device)
    emb = timestep_embedding(values, embed_dim).reshape(1, 4 * embed_dim)
    return emb.expand(batch, -1).contiguous()


def latent_mask(mask: Tensor, factor: int = LATENT_FACTOR) -> Tensor:
    """A pixel-resolution mask ``(b, 1, H, W)`` on the latent grid: nearest-resized by ``1/factor`` (official
    ``interpolate(mask, scale_factor=0.125)``)."""
    return F.interpolate(mask.float(), scale_factor=1.0 / factor)


def reference_net_input(latent: Tensor, sketch_mask: Tensor, reference_mask: Tensor, size: Sequence[int],
                        factor: int = LATENT_FACTOR) -> Tensor:
    """``[latent | sketch mask | reference mask]`` (b, 6, H/8, W/8): the masks (b, 1, h, w) bicubic-resized to the
    output ``size`` (H, W), then :func:`latent_mask`; ``latent`` is the scaled VAE latent of the masked reference
    (or background) resized to (H, W)."""
    size = (int(size[0]), int(size[1]))
    masks = [latent_mask(F.interpolate(m.float(), size=size, mode="bicubic"), factor)
             for m in (sketch_mask, reference_mask)]
    masks = [m.to(latent.device, latent.dtype).expand(latent.shape[0], -1, -1, -1) if m.shape[0] == 1 else m
             for m in masks]
    return torch.cat([latent, *masks], dim=1)


def masked_reference(reference: Tensor, reference_mask: Tensor, threshold: float = 0.5) -> Tensor:
    """The official background image when none is given: the reference (in [-1, 1]) with the character
    (``rmask ≥ threshold``) painted white."""
    return torch.where(reference_mask < threshold, reference, torch.ones_like(reference))


__all__ = [
    "BACKGROUND_LORA_RANK",
    "CONV_FG_IN_CHANNELS",
    "LATENT_FACTOR",
    "REFERENCE_NET_ADM",
    "REFERENCE_NET_IN_CHANNELS",
    "ReferenceNet",
    "SelfAttentionBlock",
    "SelfAttentionTransformer",
    "add_background_lora",
    "build_reference_net",
    "build_xlv2_unet",
    "crop_scale",
    "latent_mask",
    "masked_reference",
    "reference_adm",
    "reference_net_config",
    "reference_net_input",
]
