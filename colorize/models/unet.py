"""The SD2.1 denoising U-Net of ColorizeDiffusion (``DualCondUNet``), thesis §5.3.1 and Eq. 5.1.

Topology (reference notes §1.3, full size): input blocks = conv_in, then per level ``num_res_blocks`` ×
(ResBlock [+ SpatialTransformer]) and a Downsample (except the last level); middle = Res, Attn, Res; output
blocks mirror the encoder with ``num_res_blocks + 1`` blocks per level, each consuming one skip, and an
Upsample closing every level but the top one.  Sketch hints (Eq. 5.1) are added after input blocks
0, 3, 6, 9, 11 (after conv_in, after each Downsample, after the last input block), before the skip is stored.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import fields
from typing import Any, Callable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from colorize.config import UNetConfig
from colorize.models.attention import SpatialTransformer

ReferenceScales = Union[Sequence[Union[float, Tensor]], Tensor, None]


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoid ``[cos(t·f_k), sin(t·f_k)]``, ``f_k = exp(-ln(max_period)·k/(dim/2))``; float32, shape (b, dim).

    ``timesteps`` may be continuous (k-diffusion passes fractional t).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def group_norm(channels: int) -> nn.GroupNorm:
    """The U-Net's ResBlock / output normalisation: GroupNorm(32, eps 1e-5)."""
    return nn.GroupNorm(32, channels)


class ResBlock(nn.Module):
    """GN→SiLU→conv, + Linear(SiLU(emb)) per channel, GN→SiLU→conv, + skip (1×1 conv when widths differ)."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """3×3 conv, stride 2, padding 1 (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2 (or to ``size``, for odd skip sizes) then 3×3 conv (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int] | None = None) -> Tensor:
        if size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x)


class UNetBlock(nn.Sequential):
    """One entry of ``input_blocks`` / ``middle_block`` / ``output_blocks``: routes each layer its inputs."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        emb: Tensor,
        context: Tensor | None,
        scales: ReferenceScales = None,
        size: Sequence[int] | None = None,
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, 1.0 if scales is None else scales[layer.attn_index])
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class DualCondUNet(nn.Module):
    """SD2.1 U-Net conditioned on reference tokens (cross-attention) and sketch hints (additive, Eq. 5.1).

    Reference strength is a *forward argument* (``reference_scales``), not module state: the official code
    stores ``reference_scale`` as a per-block attribute, which makes a value set for one generation leak into
    the next (sticky-state bugs, reference notes §7).  Here every call states its scales or gets all ones.
    ``state_dict()`` keys equal the official ``model.diffusion_model.*`` keys with that prefix stripped.
    ``use_checkpoint`` recomputes each block in the backward pass (training only).  ``make_attention`` is the
    hook for variants (split attention, LoRA) that replace the SpatialTransformer.
    """

    def __init__(
        self,
        cfg: UNetConfig,
        *,
        use_checkpoint: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_checkpoint = use_checkpoint
        self.hint_indices: list[int] = []
        self.num_attention_blocks = 0
        with torch.device(device) if device is not None else nullcontext():
            emb_dim = 4 * cfg.model_channels
            self.time_embed = nn.Sequential(
                nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            skip_channels = self._build_input_blocks(emb_dim)
            self._build_middle_block(emb_dim)
            self._build_output_blocks(emb_dim, skip_channels)
            self.out = nn.Sequential(
                group_norm(cfg.model_channels), nn.SiLU(), nn.Conv2d(cfg.model_channels, cfg.out_channels, 3, padding=1)
            )
            self._zero_init()
        if dtype is not None:
            self.to(dtype)

    # ---------------------------------------------------------------- construction
    def make_attention(self, channels: int, attn_index: int) -> SpatialTransformer:
        """The attention block for ``channels`` at position ``attn_index`` of the official attention order.

        Variants override this and return a ``SpatialTransformer`` subclass (``UNetBlock`` routes context
        and reference scale by that type).
        """
        cfg = self.cfg
        heads = channels // cfg.num_head_channels
        return SpatialTransformer(
            channels, heads, cfg.num_head_channels, cfg.context_dim, cfg.transformer_depth, attn_index
        )

    def _next_attention(self, channels: int) -> SpatialTransformer:
        block = self.make_attention(channels, self.num_attention_blocks)
        self.num_attention_blocks += 1
        return block

    def _res_level(self, ch_in: int, ch_out: int, emb_dim: int, attention: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [ResBlock(ch_in, emb_dim, ch_out)]
        if attention:
            layers.append(self._next_attention(ch_out))
        return layers

    def _build_input_blocks(self, emb_dim: int) -> list[int]:
        blocks, skip_channels, self.hint_indices, self._bottom = build_input_blocks(
            self.cfg, emb_dim, self._next_attention
        )
        self.input_blocks = blocks
        return skip_channels

    def _build_middle_block(self, emb_dim: int) -> None:
        ch, _ = self._bottom
        self.middle_block = UNetBlock(ResBlock(ch, emb_dim, ch), self._next_attention(ch), ResBlock(ch, emb_dim, ch))

    def _build_output_blocks(self, emb_dim: int, skip_channels: list[int]) -> None:
        cfg = self.cfg
        ch, ds = self._bottom
        skips = list(skip_channels)
        blocks = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out_ch = mult * cfg.model_channels
                layers = self._res_level(ch + skips.pop(), out_ch, emb_dim, ds in cfg.attention_resolutions)
                ch = out_ch
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(UNetBlock(*layers))
        self.output_blocks = nn.ModuleList(blocks)

    def _zero_init(self) -> None:
        """Zero the residual output layers as SD does (irrelevant once weights are loaded)."""
        zero_residual_outputs(self)
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    # ---------------------------------------------------------------- forward
    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def attention_blocks(self) -> list[SpatialTransformer]:
        """The SpatialTransformers in the official attention-block order."""
        found = [m for m in self.modules() if isinstance(m, SpatialTransformer)]
        return sorted(found, key=lambda m: m.attn_index)

    def _scales(self, scales: ReferenceScales, device: torch.device) -> ReferenceScales:
        if scales is None:
            return None
        if len(scales) != self.num_attention_blocks:
            raise ValueError(f"expected {self.num_attention_blocks} reference scales, got {len(scales)}")
        if isinstance(scales, Tensor):
            return scales.to(device=device, dtype=self.dtype)
        return [s.to(device=device, dtype=self.dtype) if isinstance(s, Tensor) else float(s) for s in scales]

    def _hints(self, hints: Sequence[Tensor | None] | None) -> dict[int, Tensor]:
        if hints is None:
            return {}
        if len(hints) != len(self.hint_indices):
            raise ValueError(f"expected {len(self.hint_indices)} sketch hints, got {len(hints)}")
        return {i: h.to(self.dtype) for i, h in zip(self.hint_indices, hints) if h is not None}

    def _run(self, block: UNetBlock, *args: Any) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | None,
        hints: Sequence[Tensor | None] | None = None,
        reference_scales: ReferenceScales = None,
    ) -> Tensor:
        """Predict the model output (ε or v) for latent ``x`` (b, C, h, w).

        timesteps: float (b,) or scalar, continuous values allowed.  context: (b, N, context_dim) reference
        tokens; ``None`` = empty reference (identical to any all-zero context).  hints: the sketch-encoder
        outputs (already multiplied by the sketch strength), one per ``hint_indices`` entry, ``None`` entries
        skipped.  reference_scales: ``None`` (all 1) or one value per attention block in the official order
        (see ``colorize.models.strength``); a value is a float, or a tensor of shape () or (b,); a tensor of
        shape (16,) or (16, b) is accepted too.  They multiply softmax(qkᵀ/√d)·v of every ``attn2``.
        """
        if context is not None:
            context = context.to(self.dtype)
        emb = self._embed(timesteps, x)
        scales = self._scales(reference_scales, x.device)
        h, skips = self._encode(x, emb, context, scales, hints)
        return self._head(self._decode(h, skips, emb, context, scales), x)

    # Forward pieces, shared with variants that change one stage (e.g. the v2 decoder).
    def _embed(self, timesteps: Tensor, x: Tensor) -> Tensor:
        """Time embedding ``time_embed(sinusoid(t))`` (b, 4·model_channels) in the model dtype."""
        t = timesteps.reshape(-1).to(x.device)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        t_emb = timestep_embedding(t, self.cfg.model_channels)
        return self.time_embed(t_emb.to(self.time_embed[0].weight.dtype)).to(self.dtype)

    def _encode(
        self, x: Tensor, emb: Tensor, context: Any, scales: ReferenceScales, hints: Sequence[Tensor | None] | None
    ) -> tuple[Tensor, list[Tensor]]:
        """Input blocks (hints added after their blocks, skips stored) and the middle block."""
        hints_at = self._hints(hints)
        h, skips = x.to(self.dtype), []
        for i, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, context, scales)
            if i in hints_at:
                h = h + hints_at[i]
            skips.append(h)
        return self._run(self.middle_block, h, emb, context, scales), skips

    def _decode(self, h: Tensor, skips: list[Tensor], emb: Tensor, context: Any, scales: ReferenceScales) -> Tensor:
        """Output blocks, each consuming the last stored skip (``skips`` is emptied)."""
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(block, h, emb, context, scales, size)
        return h

    def _head(self, h: Tensor, x: Tensor) -> Tensor:
        return self.out(h.to(self.out[2].weight.dtype)).to(x.dtype)


def build_input_blocks(
    cfg: UNetConfig, emb_dim: int, attention: Callable[[int], nn.Module]
) -> tuple[nn.ModuleList, list[int], list[int], tuple[int, int]]:
    """The encoder half of the U-Net (``input_blocks``), shared by ``DualCondUNet`` and the v2 encoders.

    ``attention(channels)`` makes each attention block, in the official order.  Returns the blocks, the
    output width of every block (the skip widths), the hint indices (0, every Downsample, the last block)
    and ``(channels, downsample factor)`` at the bottom.
    """
    ch, ds = cfg.model_channels, 1
    blocks = [UNetBlock(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
    skip_channels, hint_indices = [ch], [0]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out_ch = mult * cfg.model_channels
            layers: list[nn.Module] = [ResBlock(ch, emb_dim, out_ch)]
            if ds in cfg.attention_resolutions:
                layers.append(attention(out_ch))
            blocks.append(UNetBlock(*layers))
            ch = out_ch
            skip_channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            blocks.append(UNetBlock(Downsample(ch)))
            skip_channels.append(ch)
            hint_indices.append(len(blocks) - 1)
            ds *= 2
    if hint_indices[-1] != len(blocks) - 1:
        hint_indices.append(len(blocks) - 1)
    return nn.ModuleList(blocks), skip_channels, hint_indices, (ch, ds)


def zero_residual_outputs(module: nn.Module) -> None:
    """Zero every ResBlock's last conv and every SpatialTransformer's ``proj_out`` inside ``module``."""
    for m in module.modules():
        layer = m.out_layers[3] if isinstance(m, ResBlock) else m.proj_out if isinstance(m, SpatialTransformer) else None
        if layer is not None:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def config_from_official(params: Mapping[str, Any]) -> UNetConfig:
    """``UNetConfig`` from official ``DualCondUNet`` constructor params (extra official keys ignored)."""
    names = {f.name for f in fields(UNetConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    return UNetConfig(**kw)
