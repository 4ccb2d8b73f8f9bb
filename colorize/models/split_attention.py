"""Split cross-attention (thesis §5.5.2, Eq. 5.4) and the v1.5 U-Net that uses it.

With a sketch foreground mask ``m_s`` the context holds ``2N`` tokens: ``[e (foreground/reference) | e_b
(background)]``.  In every ``attn2`` the query positions attend to each half separately (the foreground half
with the foreground LoRA, the background half with the background LoRA, each when enabled), the results are
scaled by the block's reference strength and by ``fg_scale`` / ``bg_scale``, the background result is blended
into the foreground one by ``merge_scale``, and each position takes the foreground result where the mask
(bicubic-resized to the block's token grid) is above the threshold, else the background one; ``to_out``
follows (reference notes §1.9, §2.6; fixture README §4).  Tie rule at ``mask == threshold``: LoRA layers
pick the background (``mask > t`` is foreground), layers without LoRA pick the foreground (``mask < t`` is
background), as the official code does.

Everything a call needs travels with the call: :class:`SplitOptions` is wrapped with the context into a
:class:`SplitContext`, which the U-Net routes through its ``context`` slot to the attention blocks.  Without
options (``split=None``) the model computes exactly the v1 path (no LoRA, plain attention over the context).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.config import UNetConfig
from colorize.models.attention import (
    CrossAttention,
    Scale,
    SpatialTransformer,
    apply_scale,
)
from colorize.models.lora import Branch, SplitLoraLinear, project
from colorize.models.switch_config import (
    FULL_SWITCH,
    Rank,
    SplitLoraConfig,
    resolve_rank,
)
from colorize.models.unet import DualCondUNet, ReferenceScales


@dataclass(frozen=True)
class SplitOptions:
    """Per-call settings of split cross-attention.

    mask: sketch foreground mask at latent resolution, ``(b, 1, h, w)`` (or ``(h, w)`` / ``(1, 1, h, w)``;
    a batch that divides the model batch is tiled, as CFG batches ``[cond, uncond…]`` need), values in [0, 1].
    threshold: ``τ_s`` (app default 0.05).  fg_scale / bg_scale: "Foreground/Background strength" (default 1).
    merge_scale: share of the background result blended into the foreground one (default 0).
    use_fg_lora / use_bg_lora: apply the LoRA pair in that branch (layers that have LoRA).
    lora_scale: multiplier of every LoRA delta (1 = as trained).
    """

    mask: Tensor
    threshold: float | Tensor = 0.05  # a (b, 1, 1) tensor gives per-sample thresholds (training)
    fg_scale: float = 1.0
    bg_scale: float = 1.0
    merge_scale: float = 0.0
    use_fg_lora: bool = False
    use_bg_lora: bool = False
    lora_scale: float = 1.0


def resize_mask_tokens(mask: Tensor, h: int, w: int) -> Tensor:
    """A latent mask ``(b, 1, H, W)`` bicubic-resized to an ``h×w`` token grid, as ``(b, h·w, 1)`` float32."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) != (h, w):
        mask = F.interpolate(mask, size=(h, w), mode="bicubic", align_corners=False)
    return mask.flatten(2).transpose(1, 2)


def combine_split(fg: Tensor, bg: Tensor, mask: Tensor, o: SplitOptions, scale: Scale, lora: bool) -> Tensor:
    """Eq. 5.4's merge of the two attention halves (before ``to_out``): each scaled by reference × fg/bg strength,
    the background blended into the foreground by ``merge_scale``, then picked per position by the mask tokens
    ``(b, n, 1)``. Tie rule of the official layers: with LoRA ``mask > t`` is foreground, without it
    ``mask < t`` is background."""
    bg = apply_scale(bg, scale * o.bg_scale)
    fg = apply_scale(fg, scale * o.fg_scale)
    if o.merge_scale != 0.0:
        fg = fg * (1.0 - o.merge_scale) + bg * o.merge_scale
    if lora:
        return torch.where(mask > o.threshold, fg, bg)
    return torch.where(mask < o.threshold, bg, fg)


@dataclass
class BlockSplit:
    """What one attention block receives: both token halves, the mask on its token grid ``(b, hw, 1)``."""

    fg: Tensor
    bg: Tensor
    mask: Tensor
    options: SplitOptions


@dataclass
class SplitContext:
    """Context ``(b, 2N, c)`` plus :class:`SplitOptions` for one forward call (resized masks cached per grid)."""

    context: Tensor
    options: SplitOptions
    _masks: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.context.ndim != 3 or self.context.shape[1] % 2:
            raise ValueError(f"split attention needs a (b, 2N, c) context, got {tuple(self.context.shape)}")
        mask = self.options.mask
        if mask.ndim == 2:
            mask = mask[None, None]
        elif mask.ndim == 3:
            mask = mask[:, None]
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be (b, 1, h, w), got {tuple(self.options.mask.shape)}")
        b, mb = self.context.shape[0], mask.shape[0]
        if b % mb:
            raise ValueError(f"mask batch {mb} does not divide the context batch {b}")
        self._mask = mask.to(device=self.context.device, dtype=torch.float32).repeat(b // mb, 1, 1, 1)

    def to(self, dtype: torch.dtype) -> SplitContext:
        """Same call with the context tokens cast (the mask stays float32)."""
        out = SplitContext(self.context.to(dtype), self.options)
        out._masks = self._masks
        return out

    def mask_tokens(self, h: int, w: int) -> Tensor:
        """The latent mask bicubic-resized to an ``h×w`` token grid, as ``(b, h·w, 1)`` float32.

        Equal to the official ``interpolate(mask, scale_factor=1/ds, mode="bicubic")`` whenever the latent size
        is divisible by the block's downsample factor ``ds`` (always for image sizes that are multiples of 64).
        """
        cached = self._masks.get((h, w))
        if cached is None:
            cached = self._masks[(h, w)] = resize_mask_tokens(self._mask, h, w)
        return cached

    def at(self, h: int, w: int) -> BlockSplit:
        fg, bg = self.context.chunk(2, dim=1)
        return BlockSplit(fg, bg, self.mask_tokens(h, w), self.options)


class SplitCrossAttention(CrossAttention):
    """``attn2`` that also runs Eq. 5.4 when given a :class:`BlockSplit`; optional fg/bg LoRA on to_q/k/v.

    With a plain tensor (or ``None``) context it is exactly :class:`CrossAttention` (LoRA never applied).
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int,
                 lora_ranks: tuple[Rank, Rank] | None = None) -> None:
        super().__init__(query_dim, context_dim, heads, dim_head)
        self.has_lora = lora_ranks is not None
        if lora_ranks is not None:
            inner = heads * dim_head
            for name, fan_in in (("to_q", query_dim), ("to_k", context_dim), ("to_v", context_dim)):
                fg, bg = (resolve_rank(r, fan_in, inner) for r in lora_ranks)
                setattr(self, name, SplitLoraLinear(fan_in, inner, fg, bg))

    def _branch(self, x: Tensor, q_base: Tensor, tokens: Tensor, branch: Branch | None, s: float) -> Tensor:
        q = project(self.to_q, x, branch, s, q_base)
        return self.attend(q, project(self.to_k, tokens, branch, s), project(self.to_v, tokens, branch, s))

    def forward(self, x: Tensor, context: Tensor | BlockSplit | None = None, scale: Scale = 1.0) -> Tensor:
        if not isinstance(context, BlockSplit):
            return super().forward(x, context, scale)
        o = context.options
        fg_branch: Branch | None = "fg" if self.has_lora and o.use_fg_lora else None
        bg_branch: Branch | None = "bg" if self.has_lora and o.use_bg_lora else None
        q_base = self.to_q(x)
        bg = self._branch(x, q_base, context.bg, bg_branch, o.lora_scale)
        fg = self._branch(x, q_base, context.fg, fg_branch, o.lora_scale)
        return self.to_out(combine_split(fg, bg, context.mask, o, scale, self.has_lora))


class SplitSpatialTransformer(SpatialTransformer):
    """SpatialTransformer whose ``attn2`` layers are :class:`SplitCrossAttention`.

    It resolves a :class:`SplitContext` to this block's :class:`BlockSplit` (mask on its token grid).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1,
                 attn_index: int = -1, lora_ranks: tuple[Rank, Rank] | None = None) -> None:
        super().__init__(channels, heads, dim_head, context_dim, depth, attn_index)
        inner = heads * dim_head
        for block in self.transformer_blocks:
            block.attn2 = SplitCrossAttention(inner, context_dim, heads, dim_head, lora_ranks)

    def forward(self, x: Tensor, context: Tensor | SplitContext | None, scale: Scale = 1.0) -> Tensor:
        if isinstance(context, SplitContext):
            context = context.at(x.shape[-2], x.shape[-1])  # type: ignore[assignment]
        return super().forward(x, context, scale)  # type: ignore[arg-type]


def encoder_attention_count(cfg: UNetConfig) -> int:
    """Number of attention blocks in the input blocks (the middle block's index; decoder blocks follow)."""
    return sum(cfg.num_res_blocks for level in range(len(cfg.channel_mult)) if 2**level in cfg.attention_resolutions)


class SwitchUNet(DualCondUNet):
    """``DualCondUNet`` with split cross-attention in every block and fg/bg LoRA where ``lora.blocks`` says.

    ``lora=SplitLoraConfig()`` is v1.5 (all 16 blocks, ranks 4 / 0.5·min); ``V2_LORA`` is v2 (decoder blocks,
    4/4; the other blocks split without LoRA); ``None`` = split attention without LoRA.  ``state_dict()`` keys
    equal the official ``model.diffusion_model.*`` keys (incl. ``attn2.to_{q,k,v}.lora_{down,up}_{fg,bg}``).
    """

    def __init__(self, cfg: UNetConfig, lora: SplitLoraConfig | None = FULL_SWITCH.lora, *,
                 use_checkpoint: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.lora_config = lora  # read by make_attention during the base constructor
        super().__init__(cfg, use_checkpoint=use_checkpoint, device=device, dtype=dtype)

    def has_lora(self, attn_index: int) -> bool:
        lora = self.lora_config
        if lora is None or lora.blocks == "none":
            return False
        return lora.blocks == "all" or attn_index > encoder_attention_count(self.cfg)

    def make_attention(self, channels: int, attn_index: int) -> SpatialTransformer:
        cfg, lora = self.cfg, self.lora_config
        ranks = (lora.fg_rank, lora.bg_rank) if lora is not None and self.has_lora(attn_index) else None
        return SplitSpatialTransformer(channels, channels // cfg.num_head_channels, cfg.num_head_channels,
                                       cfg.context_dim, cfg.transformer_depth, attn_index, ranks)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | None,
        hints: Sequence[Tensor | None] | None = None,
        reference_scales: ReferenceScales = None,
        split: SplitOptions | None = None,
    ) -> Tensor:
        """As :meth:`DualCondUNet.forward`; with ``split`` the context is ``[fg N | bg N]`` and Eq. 5.4 is used.

        Without ``split`` this is the v1 computation over ``context`` (LoRA off), whatever its token count.
        """
        if split is not None:
            if context is None:
                raise ValueError("split attention needs a context tensor (b, 2N, c); use zeros for an empty one")
            context = SplitContext(context, split)  # type: ignore[assignment]
        return super().forward(x, timesteps, context, hints, reference_scales)


__all__ = [
    "BlockSplit",
    "SplitContext",
    "SplitCrossAttention",
    "SplitOptions",
    "SplitSpatialTransformer",
    "SwitchUNet",
    "encoder_attention_count",
]
