"""Anime2Sketch (Xiaoyu Xiang, MIT) — the official app's ``lineart`` extractor (``netG.pth``).

Official ``preprocessor/__init__.py:24-31`` (commit ``c9bd9fb``): ``UnetGenerator(3, 1, num_downs=8, ngf=64)`` with InstanceNorm (no affine, no running
stats, hence biased convolutions everywhere). The U-Net is nested: each level is
``[LeakyReLU(0.2), Conv 4×4 s2, InstanceNorm, <inner level>, ReLU, ConvTranspose 4×4 s2, InstanceNorm]``
and concatenates its input with its output; the innermost level has no inner norm and no sub-level,
the outermost starts with the bare conv and ends with Tanh. Eight stride-2 levels ⇒ inputs must be
multiples of 256. Input RGB in [-1, 1]; output one channel in [-1, 1], black lines on white.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

MULTIPLE = 256


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class UnetLevel(nn.Module):
    """One U-Net level; ``model`` holds the layers (index layout matches the published weights)."""

    def __init__(self, outer: int, inner: int, sub: UnetLevel | None = None, in_channels: int | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer, inner, 4, 2, 1)
        up_in = inner if sub is None else inner * 2
        up = nn.ConvTranspose2d(up_in, outer, 4, 2, 1)
        if outermost:
            layers = [down, sub, nn.ReLU(), up, nn.Tanh()]
        elif sub is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), sub, nn.ReLU(), up, _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], 1)


class UnetGenerator(nn.Module):
    """``UnetGenerator(in_channels, out_channels, num_downs, ngf)`` built from the innermost level out."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, num_downs: int = 8, ngf: int = 64) -> None:
        super().__init__()
        level = UnetLevel(ngf * 8, ngf * 8)
        for _ in range(num_downs - 5):
            level = UnetLevel(ngf * 8, ngf * 8, level)
        for mult in (4, 2, 1):
            level = UnetLevel(ngf * mult, ngf * mult * 2, level)
        self.model = UnetLevel(out_channels, ngf, level, in_channels=in_channels, outermost=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of 256 → (B, 1, H, W) sketch in [-1, 1]."""
        return self.model(x)


def prepare(image01: Tensor) -> Tensor:
    return image01 * 2.0 - 1.0


def finish(raw: Tensor, batch: int) -> Tensor:
    """Tanh output (lines −1, paper +1) → black lines on white in [0, 1]."""
    return (raw.float().clamp(-1, 1) + 1.0) / 2.0


__all__ = ["MULTIPLE", "UnetGenerator", "UnetLevel", "finish", "prepare"]
