"""ColorizeDiffusion XL sketch encoder (official ``MultiScaleAttentionEncoder``, ``refnet/modules/encoder.py:90-174``
of ``tellurion-kanata/ColorizeDiffusionXL`` at commit ``ec78784``): four sketch hints for the SDXL U-Net.

What it computes (``encoder.py:90-174``):

1. the fixed convolutional stem of the SD2.1 encoder (3 → 16 → 16 → 32 (/2) → 32 → 96 (/2) → 96 → 256 (/2) →
   ``model_channels``, SiLU between the convs, none after the last) gives the /8 feature;
2. ``len(ch_mults)`` stages (SiLU, 3×3 conv; stride 2 except the last, stride 1) give the /16, /32, /32
   features of widths ``model_channels · ch_mults[i]``;
3. every feature is projected by a 1×1 conv to the attention width and flattened to tokens; one more 1×1 conv
   of the spatial mean of the last stage gives a single global token; the sequence is
   ``[global, last stage, …, first stage, stem]`` (coarse first);
4. one attention layer (``refnet.modules.attention.MultiScaleCausalAttention``): q and k are RMS-normalised over
   the whole inner width, rotated per head by a 2-D RoPE (the first half of each head's interleaved pairs by the
   row index inside its scale's grid, the second half by the column index; tables in float64), and the tokens of
   a scale attend to every coarser token and to their own scale only (*causal by scale*); the result is added
   to the tokens (residual);
5. every scale but the global token is reshaped to its grid and 1×1-projected back to its channel count.

The hints come at strides 8, 16, 32, 32 with ``model_channels · (1, ch_mults…)`` channels and are added after
the XL U-Net's input blocks 0, 3, 6, 8 (``refnet/modules/unet.py:367, 384-389``). The input is the sketch in
[−1, 1] with lines ≈ +1 (``backend/functool.py:49-96``). Odd sizes work: every stride-2 conv rounds up.

State-dict keys equal the official ``control_encoder.*`` names without that prefix: ``model.{0,2,…,14}`` (stem),
``downsample_layers.{i}.1`` (stages), ``proj_ins.{0..n+1}`` (stem, stages, then the global token),
``proj_outs.{0..n}`` (stem, stages), ``attn_layer.{to_q,to_k,to_v,to_out.0,q_norm,k_norm}``.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from colorize.checkpoint.common import shape_of
from colorize.errors import CheckpointError
from colorize.models.sketch_encoder import STEM_STRIDES, STEM_WIDTHS

#: The state-dict prefix of the sketch encoder inside an XL checkpoint.
PREFIX = "control_encoder."


@dataclass(frozen=True)
class MultiScaleEncoderConfig:
    """``MultiScaleAttentionEncoder`` sizes; the defaults are the released ones (``control_encoder`` of
    ``configs/inference/sdxl.yaml`` and ``xlv2.yaml``: model_channels 320, ch_mults [1, 2, 4], attention width 1280,
    head width 128 (10 heads); 25,984,720 parameters).

    ``attention_width`` 0 means "the last stage's width" (``model_channels · ch_mults[-1]``, which is what the
    official class uses: 1280 full size, 64 in the fixture's ``model_channels`` 16) and is replaced by that number
    on construction. ``dim_head`` must be a multiple of 4 (the 2-D RoPE splits each head's pairs in two halves).
    ``rope_base`` 10000 and ``norm_eps`` 1e-6 (RMSNorm) are not in the facts we have: they are the values that
    reproduce the golden fixture (to 1.2e-7; eps 1e-5 or 1e-7, or bases 100 or 1000, miss it by 1e-5 or more).
    """

    in_ch: int = 3
    model_channels: int = 320
    ch_mults: tuple[int, ...] = (1, 2, 4)
    attention_width: int = 0
    dim_head: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mults", tuple(int(m) for m in self.ch_mults))
        if not self.ch_mults or min(self.ch_mults) < 1 or self.model_channels < 1 or self.in_ch < 1:
            raise ValueError(f"invalid sketch encoder sizes: in_ch {self.in_ch}, model_channels "
                             f"{self.model_channels}, ch_mults {self.ch_mults}")
        if self.attention_width == 0:
            object.__setattr__(self, "attention_width", self.model_channels * self.ch_mults[-1])
        if self.dim_head < 4 or self.dim_head % 4:
            raise ValueError(f"dim_head {self.dim_head} must be a positive multiple of 4 (2-D RoPE)")
        if self.attention_width % self.dim_head:
            raise ValueError(f"attention width {self.attention_width} is not a multiple of dim_head {self.dim_head}")

    @property
    def heads(self) -> int:
        return self.attention_width // self.dim_head

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Widths of the stages (``model_channels · ch_mults``)."""
        return tuple(self.model_channels * m for m in self.ch_mults)

    @property
    def hint_channels(self) -> tuple[int, ...]:
        """Channels of the hints, finest first: the stem's, then every stage's."""
        return (self.model_channels, *self.stage_channels)

    @property
    def hint_strides(self) -> tuple[int, ...]:
        """Pixel strides of the hints: 8 for the stem, ×2 per stage except the last."""
        strides, s = [8], 8
        for i in range(len(self.ch_mults)):
            s *= 1 if i == len(self.ch_mults) - 1 else 2
            strides.append(s)
        return tuple(strides)


#: The released size (both XL model types use the same sketch encoder).
FULL_XL_SKETCH_ENCODER = MultiScaleEncoderConfig()


def config_from_official(params: Mapping[str, Any]) -> MultiScaleEncoderConfig:
    """:class:`MultiScaleEncoderConfig` from the official constructor params (``in_ch``, ``model_channels``,
    ``ch_mults``, ``dim_head``; others of ours taken if present)."""
    names = {f.name for f in fields(MultiScaleEncoderConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    return MultiScaleEncoderConfig(**kw)


# ------------------------------------------------------------------------------------------------ pure helpers


def rope_angles(grids: Sequence[tuple[int, int]], dim_head: int, base: float = 10000.0) -> Tensor:
    """2-D RoPE angles (float64, ``(sum h·w, dim_head // 2)``) for the tokens of grids flattened row-major and
    concatenated in order (``refnet/modules/attention.py`` ``RotaryPositionalEmbeddings``,
    used by ``refnet/modules/encoder.py:90-174``).

    Pair ``j`` of the first half turns by ``row · base^(−j / (dim_head/4))``, pair ``j`` of the second half by
    ``col`` with the same frequencies; positions restart at (0, 0) in every grid (so a 1×1 grid is not rotated).
    """
    if dim_head % 4:
        raise ValueError(f"dim_head {dim_head} must be a multiple of 4")
    quarter = dim_head // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    parts = []
    for h, w in grids:
        rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
        cols = torch.arange(w, dtype=torch.float64).repeat(h)
        parts.append(torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1))
    return torch.cat(parts, dim=0) if parts else torch.zeros(0, 2 * quarter, dtype=torch.float64)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate interleaved pairs ``(x[..., 2j], x[..., 2j+1])`` of ``x`` (``(…, tokens, dim)``) by ``angles``
    (``(tokens, dim // 2)``). The rotation runs in at least float32 (tables cast from float64); the result has
    ``x``'s dtype."""
    work = torch.promote_types(x.dtype, torch.float32)
    cos = angles.cos().to(device=x.device, dtype=work)
    sin = angles.sin().to(device=x.device, dtype=work)
    pairs = x.to(work).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


def scale_ids(lengths: Sequence[int]) -> Tensor:
    """The scale index of every token of a sequence made of ``lengths`` tokens per scale (coarse first)."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths), dtype=torch.long))


def scale_causal_mask(lengths: Sequence[int]) -> Tensor:
    """Boolean ``(n, n)`` mask, True where query ``i`` may attend to key ``j``: ``scale(j) <= scale(i)`` (every
    coarser token and its own scale; ``refnet/modules/attention.py`` ``MultiScaleCausalAttention``)."""
    ids = scale_ids(lengths)
    return ids[None, :] <= ids[:, None]


# ------------------------------------------------------------------------------------------------ modules


def _conv(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


class MultiScaleCausalAttention(nn.Module):
    """The single attention layer (keys ``attn_layer.*``): bias-free q/k/v, RMSNorm of q and k over the full width,
    2-D RoPE per head, scale-causal attention, output Linear with bias (``to_out.0``)."""

    def __init__(self, width: int, dim_head: int, eps: float = 1e-6, rope_base: float = 10000.0) -> None:
        super().__init__()
        self.heads, self.dim_head, self.rope_base = width // dim_head, dim_head, rope_base
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Sequential(nn.Linear(width, width), nn.Dropout(0.0))
        self.q_norm = nn.RMSNorm(width, eps=eps)
        self.k_norm = nn.RMSNorm(width, eps=eps)

    def forward(self, x: Tensor, grids: Sequence[tuple[int, int]]) -> Tensor:
        """``x`` (b, n, width): the tokens of ``grids`` (coarse first, each flattened row-major) → (b, n, width).

        Equal to one ``scaled_dot_product_attention`` with :func:`scale_causal_mask`; since the scales come in
        order, the queries of scale ``s`` see exactly the key prefix up to the end of ``s``, so each scale runs
        unmasked against its prefix (no n×n mask is built: 22,529 tokens at 1024²)."""
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)

        angles = rope_angles(grids, self.dim_head, self.rope_base)
        q = apply_rope(heads(self.q_norm(self.to_q(x))), angles)
        k = apply_rope(heads(self.k_norm(self.to_k(x))), angles)
        v = heads(self.to_v(x))
        outs, start = [], 0
        for h, w in grids:
            end = start + h * w
            outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end]))
            start = end
        out = torch.cat(outs, dim=2).transpose(1, 2).flatten(2)
        return self.to_out(out)


class MultiScaleAttentionEncoder(nn.Module):
    """Sketch (b, in_ch, H, W) in [−1, 1], lines +1 → ``1 + len(ch_mults)`` hints, finest first, at strides
    :attr:`MultiScaleEncoderConfig.hint_strides` (8, 16, 32, 32) with ``hint_channels`` channels
    (``refnet/modules/encoder.py:90-174``)."""

    def __init__(
        self,
        cfg: MultiScaleEncoderConfig = FULL_XL_SKETCH_ENCODER,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        mc, width = cfg.model_channels, cfg.attention_width
        chans = cfg.stage_channels
        with torch.device(device) if device is not None else nullcontext():
            stem: list[nn.Module] = []
            c = cfg.in_ch
            for w, s in zip(STEM_WIDTHS, STEM_STRIDES):
                stem += [_conv(c, w, stride=s), nn.SiLU()]
                c = w
            stem.append(_conv(c, mc))
            self.model = nn.Sequential(*stem)
            last = len(chans) - 1
            self.downsample_layers = nn.ModuleList(
                nn.Sequential(nn.SiLU(), _conv(ci, co, stride=1 if i == last else 2))
                for i, (ci, co) in enumerate(zip((mc, *chans[:-1]), chans))
            )
            self.proj_ins = nn.ModuleList(_conv(ci, width, k=1) for ci in (mc, *chans, chans[-1]))
            self.proj_outs = nn.ModuleList(_conv(width, co, k=1) for co in (mc, *chans))
            self.attn_layer = MultiScaleCausalAttention(width, cfg.dim_head, cfg.norm_eps, cfg.rope_base)
        if dtype is not None:
            self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.model[0].weight.dtype

    def forward(self, sketch: Tensor) -> list[Tensor]:
        h = self.model(sketch.to(self.dtype))
        feats = [h]
        for stage in self.downsample_layers:
            h = stage(h)
            feats.append(h)
        grids = [(f.shape[-2], f.shape[-1]) for f in feats]
        tokens = [proj(f).flatten(2).transpose(1, 2) for proj, f in zip(self.proj_ins, feats)]
        pooled = self.proj_ins[-1](feats[-1].mean(dim=(2, 3), keepdim=True)).flatten(2).transpose(1, 2)
        seq = [pooled, *tokens[::-1]]
        seq_grids = [(1, 1), *grids[::-1]]
        x = torch.cat(seq, dim=1)
        x = x + self.attn_layer(x, seq_grids)
        parts = x.split([t.shape[1] for t in seq], dim=1)[1:][::-1]
        return [
            proj(p.transpose(1, 2).unflatten(2, g))
            for proj, p, g in zip(self.proj_outs, parts, grids)
        ]


# ------------------------------------------------------------------------------------------------ inference


def _indices(keys: Sequence[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_sketch_encoder_config(shapes: Mapping[str, Any], *, dim_head: int = 128) -> MultiScaleEncoderConfig:
    """:class:`MultiScaleEncoderConfig` from a state dict's shapes (tensors, shapes or ``TensorInfo``; the
    ``control_encoder.`` prefix is stripped when present). The head width leaves no trace in the shapes (the
    RMSNorms span the whole width): it is ``dim_head`` (the released 128 by default). :class:`CheckpointError`
    when keys are missing or the widths do not fit together."""
    s = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in shapes.items()}
    what = "XL sketch encoder"

    def need(key: str) -> tuple[int, ...]:
        if key not in s:
            raise CheckpointError(f"cannot infer the {what} configuration: key {key!r} is missing.")
        return shape_of(s[key])

    in_ch = need("model.0.weight")[1]
    mc = need(f"model.{2 * len(STEM_WIDTHS)}.weight")[0]
    stages = _indices(list(s), r"downsample_layers\.(\d+)\.1\.weight$")
    if not stages or stages != list(range(len(stages))):
        raise CheckpointError(f"cannot infer the {what} configuration: downsample_layers {stages} are not 0..n-1.")
    mults = []
    for i in stages:
        ch = need(f"downsample_layers.{i}.1.weight")[0]
        if ch % mc:
            raise CheckpointError(f"cannot infer the {what} configuration: stage {i} width {ch} is not a "
                                  f"multiple of {mc}.")
        mults.append(ch // mc)
    width = need("proj_ins.0.weight")[0]
    try:
        return MultiScaleEncoderConfig(in_ch=in_ch, model_channels=mc, ch_mults=tuple(mults),
                                       attention_width=width, dim_head=dim_head)
    except ValueError as e:
        raise CheckpointError(f"cannot infer the {what} configuration: {e}") from None


def num_parameters(cfg: MultiScaleEncoderConfig) -> int:
    """Parameter count of the encoder for ``cfg`` (without building it)."""
    with torch.device("meta"):
        return sum(p.numel() for p in MultiScaleAttentionEncoder(cfg).parameters())


__all__ = [
    "FULL_XL_SKETCH_ENCODER",
    "PREFIX",
    "MultiScaleAttentionEncoder",
    "MultiScaleCausalAttention",
    "MultiScaleEncoderConfig",
    "apply_rope",
    "config_from_official",
    "infer_sketch_encoder_config",
    "num_parameters",
    "rope_angles",
    "scale_causal_mask",
    "scale_ids",
]
