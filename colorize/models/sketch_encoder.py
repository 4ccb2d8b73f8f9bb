"""Sketch encoder (official ``MultiEncoder``): multi-scale sketch hints for the U-Net, thesis §5.3.2.

A stride-8 convolutional stem (thesis Table 5.2: widths 16, 16, 32, 32, 96, 96, 256 with SiLU in between, then
256 → ``model_channels`` without activation) gives the latent-resolution feature; four stages
(SiLU, 3×3 conv with stride 2, 2, 2, 1, SiLU, 3×3 conv) follow.  Each of the five features passes a 1×1
"zero" conv and becomes a hint ``s_i`` added to the U-Net features (Eq. 5.1).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from colorize.config import SketchEncoderConfig

STEM_WIDTHS = (16, 16, 32, 32, 96, 96, 256)
STEM_STRIDES = (1, 1, 2, 1, 2, 1, 2)


def _conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


def _stem(in_ch: int, out_ch: int) -> nn.Sequential:
    """Keys ``model.{0,2,...,14}``: conv/SiLU pairs, last conv without activation."""
    layers: list[nn.Module] = []
    c = in_ch
    for width, stride in zip(STEM_WIDTHS, STEM_STRIDES):
        layers += [_conv3(c, width, stride), nn.SiLU()]
        c = width
    layers.append(_conv3(c, out_ch))
    return nn.Sequential(*layers)


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Keys ``output_blocks.i.{1,3}``: SiLU, conv (strided), SiLU, conv."""
    return nn.Sequential(nn.SiLU(), _conv3(c_in, c_out, stride), nn.SiLU(), _conv3(c_out, c_out))


def _zero_conv(channels: int) -> nn.Sequential:
    """Keys ``….0``: a zero-initialised 1×1 conv."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv)


class SketchEncoder(nn.Module):
    """Sketch (b, in_ch, H, W) in [-1, 1], lines +1 → five hints at strides 8, 16, 32, 64, 64 (H, W ÷ 64).

    ``state_dict()`` keys equal the official ``control_encoder.*`` keys with that prefix stripped.
    Stage ``i`` has width ``model_channels · ch_mults[i]``; every stage but the last halves the resolution.
    """

    def __init__(
        self, cfg: SketchEncoderConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        widths = [mc * m for m in cfg.ch_mults]
        with torch.device(device) if device is not None else nullcontext():
            self.model = _stem(cfg.in_ch, mc)
            self.zero_layer = _zero_conv(mc)
            c_in = [mc] + widths[:-1]
            last = len(widths) - 1
            self.output_blocks = nn.ModuleList(
                _stage(ci, co, 1 if i == last else 2) for i, (ci, co) in enumerate(zip(c_in, widths))
            )
            self.zero_blocks = nn.ModuleList(_zero_conv(c) for c in widths)
        if dtype is not None:
            self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.model[0].weight.dtype

    def forward(self, sketch: Tensor) -> list[Tensor]:
        h = self.model(sketch.to(self.dtype))
        hints = [self.zero_layer(h)]
        for stage, zero in zip(self.output_blocks, self.zero_blocks):
            h = stage(h)
            hints.append(zero(h))
        return hints


def config_from_official(params: Mapping[str, Any]) -> SketchEncoderConfig:
    """``SketchEncoderConfig`` from official ``MultiEncoder`` constructor params."""
    names = {f.name for f in fields(SketchEncoderConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    return SketchEncoderConfig(**kw)
