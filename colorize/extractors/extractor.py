"""Running a line extractor: polarity check, optional working resolution, pad → network → crop.

Every path returns what :func:`colorize.preprocess.prepare_sketch` expects from a sketch: (B, 3, H, W)
in [0, 1], black lines on white, at the input's resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.extractors.filters import crop, pad_to_multiple, resize
from colorize.extractors.polarity import InputPolarity, to_dark_on_light
from colorize.extractors.registry import MODEL_SPECS, ModelSpec
from colorize.preprocess import check_image


def working_size(height: int, width: int, resolution: int | None) -> tuple[int, int]:
    """The size the network sees: the input's, or scaled so the shorter side is ``resolution``."""
    if resolution is None:
        return height, width
    if resolution < 16:
        raise InputError(f"resolution must be at least 16 px (or None for the input's size); got {resolution}")
    s = resolution / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


@dataclass
class LineExtractor:
    """A loaded line-extraction network (see :func:`colorize.extractors.load_line_extractor`)."""

    kind: str
    net: nn.Module
    source: str = ""

    @property
    def spec(self) -> ModelSpec:
        return MODEL_SPECS[self.kind]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LineExtractor:
        self.net.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(
        self, image01: Tensor, input_polarity: InputPolarity = "auto", resolution: int | None = None
    ) -> Tensor:
        """Colour or grey image(s) in [0, 1] → (B, 3, H, W) black lines on white in [0, 1], same H × W.

        ``resolution`` (optional) runs the network with the shorter side at that many pixels (the
        official app squashes to 512 × 512) and resizes the lines back; by default the network sees the
        input's own size, mirror-padded to its multiple (16 or 256) and cropped back.
        """
        x = check_image(image01, "image")
        out_device, (h, w) = x.device, x.shape[-2:]
        x, _ = to_dark_on_light(x, input_polarity)
        x = resize(x, working_size(h, w, resolution)).clamp(0, 1)
        spec, device, dtype = self.spec, self.device, self.dtype
        outs = []
        for item in x.split(1):  # one image at a time: bounded memory, same result (no batch statistics)
            inp = spec.prepare(item.to(device=device, dtype=torch.float32)).to(dtype)
            padded, pad = pad_to_multiple(inp, spec.multiple)
            outs.append(spec.finish(crop(self.net(padded), pad), 1))
        lines = resize(torch.cat(outs), (h, w)).clamp(0, 1)
        return lines.to(out_device).expand(-1, 3, -1, -1).contiguous()


__all__ = ["LineExtractor", "working_size"]
