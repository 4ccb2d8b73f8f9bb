"""MangaLineExtraction (Li, Liu, Wong, SIGGRAPH 2017; ``res_skip``) — the official ``lineart_denoise``.

Official ``preprocessor/__init__.py:24-31`` (commit ``c9bd9fb``); weights ``lllyasviel/Annotators/erika.pth``. A residual U-Net on one grey channel in
0..255. Units are pre-activation: BatchNorm(eps 1e-3) → LeakyReLU(0.2) → conv ("same" padding).
Encoder: residual stages of 2, 3, 5, 7, 12 blocks with 24, 48, 96, 192, 384 channels, each stage but
the first ending in a stride-2 block (inputs must be multiples of 16); a block adds its input
(through a 1×1 conv when the shape changes) to two units. Decoder: stages of 7, 5, 3, 2 blocks
(192, 96, 48, 24 channels) whose first block upsamples ×2 (nearest) after its first conv and on its
1×1 shortcut; each stage's output is added to the encoder output of the same size. Then a 2-block
stage to 16 channels and a 1×1 unit to one channel: 0..255, paper ≈ 255, lines ≈ 0.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

MULTIPLE = 16
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what OpenCV's grey conversion uses


class Unit(nn.Module):
    """BatchNorm → LeakyReLU(0.2) → conv, optionally followed by ×2 nearest upsampling."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        layers = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2), nn.Conv2d(cin, cout, kernel, stride, kernel // 2)]
        self.model = nn.Sequential(*layers, *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Shortcut(nn.Module):
    """``x + y``, with ``x`` projected by a 1×1 conv (and upsampled) when its shape differs from ``y``'s."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        project = cin != cout or (stride != 1 and not upsample)
        layers = [nn.Conv2d(cin, cout, 1, stride)] + ([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else [])
        self.model = nn.Sequential(*layers) if project else None

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return (x if self.model is None else self.model(x)) + y


class Block(nn.Module):
    """Two units with a shortcut; ``stride`` 2 downsamples, ``upsample`` doubles the size."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.conv1 = Unit(cin, cout, 3, stride, upsample)
        self.residual = Unit(cout, cout, 3)
        self.shortcut = Shortcut(cin, cout, stride, upsample)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x, self.residual(self.conv1(x)))


class Stage(nn.Module):
    """``n`` blocks; an encoder stage downsamples in its last block (unless ``first``), a decoder stage
    upsamples in its first."""

    def __init__(self, cin: int, cout: int, n: int, first: bool = False, up: bool = False) -> None:
        super().__init__()
        blocks = []
        for i in range(n):
            stride = 2 if (i == n - 1 and not first and not up) else 1
            blocks.append(Block(cin if i == 0 else cout, cout, stride, upsample=up and i == 0))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ResSkip(nn.Module):
    """The ``res_skip`` network; key names match ``erika.pth``."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = Stage(1, 24, 2, first=True)
        self.block1 = Stage(24, 48, 3)
        self.block2 = Stage(48, 96, 5)
        self.block3 = Stage(96, 192, 7)
        self.block4 = Stage(192, 384, 12)
        self.block5 = Stage(384, 192, 7, up=True)
        self.block6 = Stage(192, 96, 5, up=True)
        self.block7 = Stage(96, 48, 3, up=True)
        self.block8 = Stage(48, 24, 2, up=True)
        self.block9 = Stage(24, 16, 2, first=True)
        self.conv15 = Unit(16, 1, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) grey 0..255, H and W multiples of 16 → (B, 1, H, W), paper ≈ 255."""
        x0 = self.block0(x)
        x1 = self.block1(x0)
        x2 = self.block2(x1)
        x3 = self.block3(x2)
        y = self.block5(self.block4(x3)) + x3
        y = self.block6(y) + x2
        y = self.block7(y) + x1
        y = self.block8(y) + x0
        return self.conv15(self.block9(y))


def prepare(image01: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] → grey (B, 1, H, W) in 0..255.

    BT.601 luma, as the original project and ControlNet read images; the official app feeds the red
    channel alone (identical for grey input, but red strokes would vanish), so this deliberately differs.
    """
    w = torch.tensor(LUMA, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
    return (image01 * w).sum(1, keepdim=True) * 255.0


def finish(raw: Tensor, batch: int) -> Tensor:
    return raw.float().clamp(0, 255) / 255.0


__all__ = ["LUMA", "MULTIPLE", "ResSkip", "finish", "prepare"]
