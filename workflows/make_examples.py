"""Draws the project's example line art and colour reference (run once; outputs are committed).

The images live beside the workflows that load them by file name; the README and tests use them too.

    python workflows/make_examples.py
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
SKIN, HAIR, EYE, DRESS, RIBBON, SKY = (252, 224, 205), (120, 70, 160), (60, 120, 200), (230, 90, 110), (250, 210, 80), (200, 225, 245)


def character(d: ImageDraw.ImageDraw, s: float, fill: bool, line: tuple[int, int, int], w: int) -> None:
    """A simple chibi character; ``fill`` colours the regions, otherwise white regions with outlines."""

    def P(*xy: float) -> list[float]:
        return [v * s for v in xy]

    def shape(kind: str, xy: list[float], color: tuple[int, int, int]) -> None:
        getattr(d, kind)(xy, fill=color if fill else (255, 255, 255), outline=line, width=w)

    shape("polygon", P(150, 330, 362, 330, 420, 505, 92, 505), DRESS)          # dress
    shape("polygon", P(60, 120, 452, 120, 470, 380, 42, 380), HAIR)            # back hair
    shape("ellipse", P(120, 80, 392, 330), SKIN)                                # face
    shape("polygon", P(110, 70, 402, 70, 400, 180, 330, 130, 256, 175, 190, 125, 112, 185), HAIR)  # fringe
    for cx in (200, 312):                                                       # eyes
        shape("ellipse", P(cx - 28, 190, cx + 28, 262), EYE)
        d.ellipse(P(cx - 10, 205, cx + 6, 225), fill=(255, 255, 255), outline=line, width=max(1, w // 2))
    d.arc(P(230, 270, 282, 300), 20, 160, fill=line, width=w)                   # mouth
    shape("polygon", P(300, 60, 380, 20, 380, 100), RIBBON)                     # ribbon
    shape("polygon", P(300, 60, 220, 20, 220, 100), RIBBON)
    shape("ellipse", P(285, 45, 315, 75), RIBBON)


def main() -> None:
    sketch = Image.new("RGB", (512, 512), (255, 255, 255))
    character(ImageDraw.Draw(sketch), 1.0, False, (20, 20, 20), 4)
    sketch.convert("L").save(HERE / "colorizediffusion_sketch.png", optimize=True)
    ref = Image.new("RGB", (384, 448), SKY)
    d = ImageDraw.Draw(ref)
    character(d, 0.75, True, (70, 40, 60), 3)
    d.rectangle([0, 400, 384, 448], fill=(150, 200, 120))
    ref.filter(ImageFilter.SMOOTH).save(HERE / "colorizediffusion_reference.png", optimize=True)


if __name__ == "__main__":
    main()
