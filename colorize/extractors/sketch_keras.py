"""SketchKeras (lllyasviel; PyTorch port) — the official app's default line extractor ``lineart_keras``.

Official ``preprocessor/__init__.py:81-92`` (commit ``c9bd9fb``); weights ``tellurion/line_extractor/model.pth``. A U-Net on one grey channel: six
encoder stages (reflection-padded convolutions, BatchNorm eps 1e-3, ReLU; four stride-2 4×4 convs,
so inputs must be multiples of 16), four decoder stages (×2 bicubic upsampling, a 4×4 conv padded
(1, 2, 1, 2), a 3×3 conv) fed with the concatenated skip, and a final 3×3 conv (64 → 1, no activation).

I/O as in the official ``proceed``: each RGB channel is fed separately as a grey image of its
high-pass response ``x − GaussianBlur(x, σ=3)`` (8-bit values, OpenCV's uint8 kernel, radius 9)
divided by the image's maximum; the output is the maximum over the three channels, values under 0.1
are cut, lines are high. The official maps that to ``2·p − 1`` (lines +1); here ``1 − clamp(p, 0, 1)``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from colorize.extractors.filters import gaussian_blur, opencv_radius

MULTIPLE = 16
BLUR_SIGMA = 3.0
OUTPUT_THRESHOLD = 0.1


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, pad: tuple[int, ...] = (1, 1, 1, 1)) -> list[nn.Module]:
    """Reflection pad → conv → BatchNorm(eps 1e-3) → ReLU (four entries, so key indices match the weights)."""
    return [nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, kernel, stride), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU()]


def _down(cin: int, cout: int, second: bool = True) -> nn.Sequential:
    """Stride-2 4×4 conv, optionally followed by a 3×3 conv at the new resolution."""
    return nn.Sequential(*_conv(cin, cout, 4, 2), *(_conv(cout, cout, 3) if second else []))


def _up(cin: int, mid: int, cout: int) -> nn.Sequential:
    """×2 bicubic upsampling, a 4×4 conv (asymmetric pad keeps the size), a 3×3 conv."""
    up = nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)
    return nn.Sequential(up, *_conv(cin, mid, 4, pad=(1, 2, 1, 2)), *_conv(mid, cout, 3))


class SketchKeras(nn.Module):
    """The SketchKeras U-Net; key names match the published PyTorch weights."""

    def __init__(self) -> None:
        super().__init__()
        self.downblock_1 = nn.Sequential(*_conv(1, 32, 3))
        self.downblock_2 = _down(32, 64)
        self.downblock_3 = _down(64, 128)
        self.downblock_4 = _down(128, 256)
        self.downblock_5 = _down(256, 512, second=False)
        self.downblock_6 = nn.Sequential(*_conv(512, 512, 3))
        self.upblock_1 = _up(1024, 512, 256)
        self.upblock_2 = _up(512, 256, 128)
        self.upblock_3 = _up(256, 128, 64)
        self.upblock_4 = _up(128, 64, 32)
        self.last_pad = nn.ReflectionPad2d(1)
        self.last_conv = nn.Conv2d(64, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) normalised high-pass, H and W multiples of 16 → (N, 1, H, W) line strength."""
        d1 = self.downblock_1(x)
        d2 = self.downblock_2(d1)
        d3 = self.downblock_3(d2)
        d4 = self.downblock_4(d3)
        d5 = self.downblock_5(d4)
        u = self.upblock_1(torch.cat([d5, self.downblock_6(d5)], 1))
        u = self.upblock_2(torch.cat([d4, u], 1))
        u = self.upblock_3(torch.cat([d3, u], 1))
        u = self.upblock_4(torch.cat([d2, u], 1))
        return self.last_conv(self.last_pad(torch.cat([d1, u], 1)))


def prepare(image01: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] → (B·3, 1, H, W): each channel's high-pass, divided by the image's maximum."""
    x = (image01 * 255.0).round()
    blurred = gaussian_blur(x, BLUR_SIGMA, radius=opencv_radius(BLUR_SIGMA, eight_bit=True)).round().clamp(0, 255)
    hp = x - blurred
    peak = hp.flatten(1).amax(1).view(-1, 1, 1, 1)
    hp = torch.where(peak > 0, hp / peak.clamp_min(1e-6), torch.zeros_like(hp))
    return hp.reshape(-1, 1, *hp.shape[-2:])


def finish(raw: Tensor, batch: int) -> Tensor:
    """(B·3, 1, H, W) network output → (B, 1, H, W) black lines on white in [0, 1]."""
    pred = raw.float().reshape(batch, -1, *raw.shape[-2:]).amax(1, keepdim=True)
    pred = torch.where(pred < OUTPUT_THRESHOLD, torch.zeros_like(pred), pred)
    return 1.0 - pred.clamp(0, 1)


__all__ = ["MULTIPLE", "SketchKeras", "finish", "prepare"]
