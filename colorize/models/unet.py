"""The SD2.1 denoising U-Net of ColorizeDiffusion (``DualCondUNet``), thesis §5.3.1 and Eq. 5.1.

Topology (full size: official ``configs/inference/*.yaml`` ``unet_config`` at commit ``c9bd9fb``): input blocks =
conv_in, then per level ``num_res_blocks`` × (ResBlock [+ SpatialTransformer]) and a Downsample (except the last
level); middle = Res, Attn, Res; output blocks mirror the encoder with ``num_res_blocks + 1`` blocks per level,
each consuming one skip, and an Upsample closing every level but the top one. Sketch hints (Eq. 5.1) are added
after input blocks 0, 3, 6, 9, 11 (after conv_in, after each Downsample, after the last input block), before
the skip is stored. The same class is the SDXL U-Net of ColorizeDiffusion XL (official ``DualCondUNetXL``,
``refnet/modules/unet.py:364`` at commit ``ec78784`` of tellurion-kanata/ColorizeDiffusionXL) with the SDXL fields
of :class:`~colorize.config.UNetConfig`: per-level transformer depth, Linear ``proj_in/out``, the "sequential"
adm embedding ``label_emb`` of a vector ``y`` added to the time embedding, hints after input blocks 0, 3, 6, 8
(``colorize.families.xl.unet``). With ``split_lora`` the cross-attention projections of the chosen blocks carry
the fg/bg LoRA pairs of v1.5 / v2 (thesis §5.5.2); every attention extension is a per-call value
(:class:`~colorize.models.attention.AttentionPatches`).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import fields
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from colorize.config import UNetConfig
from colorize.models.attention import AttentionPatches, CrossAttention, SpatialTransformer
from colorize.models.lora import SplitLoraConfig, SplitLoraLinear, resolve_rank

#: Official attention-block order (depth-first through input, middle, output blocks of the SD2.1 U-Net): the
#: ``index`` of :class:`~colorize.models.attention.AttentionSite` and of the per-block reference strengths.
ATTENTION_BLOCK_ORDER: tuple[str, ...] = (
    "input_blocks.1.1",
    "input_blocks.2.1",
    "input_blocks.4.1",
    "input_blocks.5.1",
    "input_blocks.7.1",
    "input_blocks.8.1",
    "middle_block.1",
    "output_blocks.3.1",
    "output_blocks.4.1",
    "output_blocks.5.1",
    "output_blocks.6.1",
    "output_blocks.7.1",
    "output_blocks.8.1",
    "output_blocks.9.1",
    "output_blocks.10.1",
    "output_blocks.11.1",
)
NUM_ATTENTION_BLOCKS = len(ATTENTION_BLOCK_ORDER)
#: Token-grid size of each block relative to the latent (the official blocks' ``scale_factor``).
BLOCK_SCALE_FACTORS: tuple[float, ...] = (
    1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0,
)


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
        attention: AttentionPatches | None = None,
        size: Sequence[int] | None = None,
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, attention)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class DualCondUNet(nn.Module):
    """SD2.1 U-Net conditioned on reference tokens (cross-attention) and sketch hints (additive, Eq. 5.1).

    Every per-generation input is a forward argument, attention extensions included (``attention``: reference
    strengths, split attention, injection); the official code stores ``reference_scale`` and the LoRA mode as
    module attributes, so a value set for one generation leaks into the next. ``state_dict()`` keys equal the
    official ``model.diffusion_model.*`` keys with that prefix stripped (incl. the v1.5/v2
    ``attn2.to_{q,k,v}.lora_{down,up}_{fg,bg}`` pairs with ``split_lora``). ``use_checkpoint`` recomputes each
    block in the backward pass (training only).
    """

    def __init__(
        self,
        cfg: UNetConfig,
        split_lora: SplitLoraConfig | None = None,
        *,
        use_checkpoint: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.split_lora = split_lora
        self.use_checkpoint = use_checkpoint
        self.hint_indices: list[int] = []
        self.num_attention_blocks = 0
        with torch.device(device) if device is not None else nullcontext():
            emb_dim = 4 * cfg.model_channels
            self.time_embed = nn.Sequential(
                nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            if cfg.adm_in_channels is not None:  # SDXL's "sequential" adm embedding of the vector y
                self.label_emb = nn.Sequential(
                    nn.Sequential(nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
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
    def has_lora(self, attn_index: int) -> bool:
        """Whether the cross-attention block ``attn_index`` carries the fg/bg LoRA pairs."""
        lora = self.split_lora
        if lora is None or lora.blocks == "none":
            return False
        return lora.blocks == "all" or attn_index > encoder_attention_count(self.cfg)

    def _next_attention(self, channels: int, depth: int | None = None) -> SpatialTransformer:
        """The next SpatialTransformer (``depth`` transformer blocks; default: the config's int depth)."""
        cfg, index = self.cfg, self.num_attention_blocks
        depth = cfg.level_depth(0) if depth is None else depth
        block = SpatialTransformer(channels, channels // cfg.num_head_channels, cfg.num_head_channels,
                                   cfg.context_dim, depth, index, linear=cfg.use_linear_in_transformer)
        if self.split_lora is not None:
            ranks = (self.split_lora.fg_rank, self.split_lora.bg_rank) if self.has_lora(index) else None
            add_split_lora(block, cfg.context_dim, ranks)
        self.num_attention_blocks += depth
        return block

    def _res_level(self, ch_in: int, ch_out: int, emb_dim: int, attention: bool, depth: int | None = None
                   ) -> list[nn.Module]:
        layers: list[nn.Module] = [ResBlock(ch_in, emb_dim, ch_out)]
        if attention:
            layers.append(self._next_attention(ch_out, depth))
        return layers

    def _build_input_blocks(self, emb_dim: int) -> list[int]:
        blocks, skip_channels, self.hint_indices, self._bottom = build_input_blocks(
            self.cfg, emb_dim, self._next_attention
        )
        self.input_blocks = blocks
        return skip_channels

    def _build_middle_block(self, emb_dim: int) -> None:
        ch, _ = self._bottom
        first = ResBlock(ch, emb_dim, ch)  # construction order = random-initialisation order
        attention = self._next_attention(ch, self.cfg.level_depth(-1))
        self.middle_block = UNetBlock(first, attention, ResBlock(ch, emb_dim, ch))

    def _build_output_blocks(self, emb_dim: int, skip_channels: list[int]) -> None:
        cfg = self.cfg
        ch, ds = self._bottom
        skips = list(skip_channels)
        blocks = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out_ch = mult * cfg.model_channels
                layers = self._res_level(ch + skips.pop(), out_ch, emb_dim, ds in cfg.attention_resolutions,
                                         cfg.level_depth(level))
                ch = out_ch
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(UNetBlock(*layers))
                if level == 0 and len(blocks) == self._decoder_length():
                    break
        self.output_blocks = nn.ModuleList(blocks)

    def _decoder_length(self) -> int | None:
        """How many decoder blocks to build (None: all of them)."""
        return None

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
        """The SpatialTransformers in the official attention-block order (``num_attention_blocks`` counts their
        transformer blocks: one reference strength each)."""
        found = [m for m in self.modules() if isinstance(m, SpatialTransformer)]
        return sorted(found, key=lambda m: m.attn_index)

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
        attention: AttentionPatches | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Predict the model output (ε or v) for latent ``x`` (b, C, h, w).

        timesteps: float (b,) or scalar, continuous values allowed. context: (b, N, context_dim) reference
        tokens (v1.5/v2 split attention: ``[foreground N | background N]``); ``None`` = empty reference
        (identical to any all-zero context). hints: the sketch-encoder outputs (already multiplied by the sketch
        strength), one per ``hint_indices`` entry, ``None`` entries skipped. attention: the call's attention
        processors and per-block reference strengths (:class:`~colorize.models.attention.AttentionPatches`;
        ``None`` = plain attention, all strengths 1). y: the adm vector (b or 1, ``adm_in_channels``) of a U-Net
        with ``label_emb`` (SDXL; required there, refused otherwise).
        """
        context, emb, h, skips = self._begin(x, timesteps, context, attention, hints, y)
        return self._head(self._decode(h, skips, emb, context, attention), x)

    def _begin(self, x: Tensor, timesteps: Tensor, context: Tensor | None, attention: AttentionPatches | None,
               hints: Sequence[Tensor | None] | None, y: Tensor | None = None
               ) -> tuple[Tensor | None, Tensor, Tensor, list[Tensor]]:
        """Checks, the context in the model dtype, the time embedding and the encoder pass (input + middle blocks):
        ``(context, emb, h, skips)``, shared with U-Nets that change the decoder (v2)."""
        if attention is not None:
            attention.check_blocks(self.num_attention_blocks)
        if context is not None:
            context = context.to(self.dtype)
        emb = self._embed(timesteps, x, y)
        h, skips = self._encode(x, emb, context, attention, hints)
        return context, emb, h, skips

    # Forward pieces, shared with U-Nets that change one stage (e.g. the v2 decoder).
    def _embed(self, timesteps: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Time embedding ``time_embed(sinusoid(t))`` (+ ``label_emb(y)`` with an adm input) (b, 4·model_channels)
        in the model dtype."""
        t = timesteps.reshape(-1).to(x.device)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        t_emb = timestep_embedding(t, self.cfg.model_channels)
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        label_emb = getattr(self, "label_emb", None)
        if label_emb is None:
            if y is not None:
                raise ValueError("this U-Net has no adm input (UNetConfig.adm_in_channels is None); pass y=None")
            return emb.to(self.dtype)
        if y is None:
            raise ValueError(f"this U-Net needs the adm vector y (b, {self.cfg.adm_in_channels})")
        y = y.to(device=x.device, dtype=label_emb[0][0].weight.dtype)
        if y.ndim != 2 or y.shape[1] != self.cfg.adm_in_channels:
            raise ValueError(f"y must be (b, {self.cfg.adm_in_channels}), got {tuple(y.shape)}")
        if y.shape[0] != emb.shape[0]:
            y = y.expand(emb.shape[0], -1) if y.shape[0] == 1 else tile_rows(y, emb.shape[0])
        return (emb + label_emb(y).to(emb.dtype)).to(self.dtype)

    def _encode(
        self, x: Tensor, emb: Tensor, context: Tensor | None, attention: AttentionPatches | None,
        hints: Sequence[Tensor | None] | None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Input blocks (hints added after their blocks, skips stored) and the middle block."""
        hints_at = self._hints(hints)
        h, skips = x.to(self.dtype), []
        for i, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, context, attention)
            if i in hints_at:
                h = h + hints_at[i]
            skips.append(h)
        return self._run(self.middle_block, h, emb, context, attention), skips

    def _decode(self, h: Tensor, skips: list[Tensor], emb: Tensor, context: Tensor | None,
                attention: AttentionPatches | None) -> Tensor:
        """Output blocks, each consuming the last stored skip (``skips`` is emptied)."""
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(block, h, emb, context, attention, size)
        return h

    def _head(self, h: Tensor, x: Tensor) -> Tensor:
        return self.out(h.to(self.out[2].weight.dtype)).to(x.dtype)


def build_input_blocks(
    cfg: UNetConfig, emb_dim: int, attention: Callable[[int], nn.Module]
) -> tuple[nn.ModuleList, list[int], list[int], tuple[int, int]]:
    """The encoder half of the U-Net (``input_blocks``), shared by ``DualCondUNet`` and the v2 encoders.

    ``attention(channels)`` makes each attention block, in the official order (with a per-level
    ``cfg.transformer_depth`` tuple it is called as ``attention(channels, depth)``).  Returns the blocks, the
    output width of every block (the skip widths), the hint indices (``cfg.hint_blocks``, by default 0, every
    Downsample, the last block) and ``(channels, downsample factor)`` at the bottom.
    """
    ch, ds = cfg.model_channels, 1
    blocks = [UNetBlock(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
    skip_channels, hint_indices = [ch], [0]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out_ch = mult * cfg.model_channels
            layers: list[nn.Module] = [ResBlock(ch, emb_dim, out_ch)]
            if ds in cfg.attention_resolutions:
                per_level = not isinstance(cfg.transformer_depth, int)
                layers.append(attention(out_ch, cfg.level_depth(level)) if per_level else attention(out_ch))
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
    if cfg.hint_blocks is not None:
        if any(not 0 <= i < len(blocks) for i in cfg.hint_blocks):
            raise ValueError(f"hint_blocks {cfg.hint_blocks} outside the {len(blocks)} input blocks")
        hint_indices = list(cfg.hint_blocks)
    return nn.ModuleList(blocks), skip_channels, hint_indices, (ch, ds)


def encoder_attention_count(cfg: UNetConfig) -> int:
    """Number of transformer blocks in the input blocks (the middle block's first index; decoder blocks follow)."""
    return sum(cfg.num_res_blocks * cfg.level_depth(level)
               for level in range(len(cfg.channel_mult)) if 2**level in cfg.attention_resolutions)


def add_split_lora(block: SpatialTransformer, context_dim: int, ranks: tuple[float, float] | None) -> None:
    """Give every ``attn2`` of ``block`` a fresh layer whose ``to_q/to_k/to_v`` carry fg/bg LoRA pairs of these
    ranks (:func:`~colorize.models.lora.resolve_rank`); ``None``: a fresh plain layer. The layer is built anew
    rather than patched so that random initialisation draws in the order the v1.5/v2 U-Nets always have (the
    tiny test weights and training from v1 weights reproduce exactly)."""
    for tb in block.transformer_blocks:
        old = tb.attn2
        inner, heads = old.to_q.out_features, old.heads
        attn = CrossAttention(old.to_q.in_features, context_dim, heads, inner // heads)
        if ranks is not None:
            for name, fan_in in (("to_q", old.to_q.in_features), ("to_k", context_dim), ("to_v", context_dim)):
                fg, bg = (resolve_rank(r, fan_in, inner) for r in ranks)
                setattr(attn, name, SplitLoraLinear(fan_in, inner, fg, bg))
        tb.attn2 = attn


def tile_rows(t: Tensor, batch: int) -> Tensor:
    """Repeat the rows of ``t`` over a model batch they divide (CFG batches stack ``[cond, uncond…]``)."""
    if batch % t.shape[0]:
        raise ValueError(f"batch {t.shape[0]} does not divide the model batch {batch}")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


def zero_residual_outputs(module: nn.Module) -> None:
    """Zero every ResBlock's last conv and every SpatialTransformer's ``proj_out`` inside ``module``."""
    for m in module.modules():
        layer = m.out_layers[3] if isinstance(m, ResBlock) else m.proj_out if isinstance(m, SpatialTransformer) else None
        if layer is not None:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def conv_proj_weights(unet_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A U-Net state dict with SD2.x ``proj_in/proj_out`` Linear weights ``[C, C]`` (text-to-image checkpoints)
    as the ``[C, C, 1, 1]`` 1×1-conv weights of this U-Net (the released colorizers store convs)."""
    out = dict(unet_sd)
    for k, v in unet_sd.items():
        if (".proj_in.weight" in k or ".proj_out.weight" in k) and v.ndim == 2:
            out[k] = v[:, :, None, None]
    return out


def config_from_official(params: Mapping[str, Any]) -> UNetConfig:
    """``UNetConfig`` from official ``DualCondUNet`` / ``DualCondUNetXL`` constructor params (extra official keys
    ignored; an adm input must be the "sequential" kind, the only one the colorizers use)."""
    if params.get("adm_in_channels") is not None and params.get("num_classes", "sequential") != "sequential":
        raise ValueError(f"unsupported num_classes {params.get('num_classes')!r}: only 'sequential' adm inputs")
    names = {f.name for f in fields(UNetConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    return UNetConfig(**kw)
