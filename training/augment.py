"""On-the-fly augmentation of (sketch, colour, reference) triplets: thesis §3.2 and the official loader
(``data/preprocessing.py`` at commit ``c9bd9fb``).

What is done, and where the two sources differ (the choice made here is the default; the other is a setting):

* Joint resize-and-crop of sketch and colour with aspect buckets. One bucket ``(h, w)`` per *global step*
  (official: seeds drawn once per batch, so one resolution per batch). Short edge resized to
  ``L ~ U[max(h, w), load_size)`` (official, ``load_size`` 961) — or, with ``load_size = None``, to
  ``max(h, w) · U[scale_range]`` (thesis: factor in [1.0, 1.3]); then one random crop, the *same* offset for
  sketch and colour. The thesis says the resize-crop "de-registers" sketch and colour; read literally that would
  misalign line art and target, and the official code crops both identically, which is followed here.
* Horizontal flip: joint for sketch and colour with ``flip_p`` (official: ≈50 % in switch.yaml, off in the mult
  and v2 configs, so default 0); the reference has its own flip (``reference_flip_p``, default 0: the thesis
  says the reference is never flipped, cropped or rotated).
* Reference: the *uncropped* colour image, only resized (square squash, as CLIP preprocessing does). The
  official loader squashes to ``load_size``² and CLIP squashes again to 224²; here it goes to
  ``reference_size``² (224) directly. Optional colour jitter (official range 0.9–1.1, disabled in the official
  configs) and TPS warp (thesis §3.1 names TPS; official ``warp_p`` defaults to 0), both off by default.
* Sketch border blanking (sketch only; thesis §3.2 "random cropping for S", §5.4.3 "center cropping"):
  ``border_mode="sides"`` (default, thesis) blanks four independent fractions ``Δ ~ U(0, border_max_frac)``
  (0.15) of top, bottom, left and right; ``"official"`` draws ``c ~ U{0..border_max_px}`` (150 px) and one of
  four modes: top+bottom ``c``, left+right ``c``, both (left/right ``c2 ~ U{0..100}``), none. The blanked area
  holds *no lines* (official: filled white before inversion); the thesis' "re-padded with zeros" would be a
  mid-grey in the inverted [-1, 1] domain, so the official fill is followed.
* Polarity inversion (thesis §3.2, official ``inverse_grayscale``): black-on-white sketches in [0, 1] become
  [-1, 1] with lines +1 and background -1 (``invert_sketch=False`` for data already stored white-on-black).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.config import AugmentConfig


def _uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) in [0, 1] → (C, h, w), bicubic with antialiasing, clamped."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


def choose_bucket(buckets: tuple[tuple[int, int], ...], gen: torch.Generator) -> tuple[int, int]:
    return tuple(buckets[_randint(gen, 0, len(buckets) - 1)])  # type: ignore[return-value]


def short_edge_target(crop: tuple[int, int], cfg: AugmentConfig, gen: torch.Generator) -> int:
    """Short-edge length before cropping: official ``U[max(crop), load_size)`` or thesis ``max(crop)·U[scale]``."""
    m = max(crop)
    if cfg.load_size is not None and cfg.load_size > m:
        return _randint(gen, m, cfg.load_size - 1)
    return max(m, round(m * _uniform(gen, *cfg.scale_range)))


def joint_resize_crop(
    color: Tensor, sketch: Tensor, crop: tuple[int, int], cfg: AugmentConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Flip (jointly), resize (``cfg.resize_mode``), crop ``crop`` at one random offset; same geometry for both."""
    color, sketch, _ = joint_resize_crop_geometry(color, sketch, crop, cfg, gen)
    return color, sketch


def joint_resize_crop_geometry(
    color: Tensor, sketch: Tensor, crop: tuple[int, int], cfg: AugmentConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """:func:`joint_resize_crop` and where the crop lies: ``size`` = the crop's (h, w) in pixels of the original
    image (the XL adm vector's size, official ``refnet/models/trainer/sdxl.py:155-161`` at commit ``ec78784``) and
    ``crop`` = ``[top, left, h, w]`` as fractions of the resized image (the ReferenceNet's crop embedding)."""
    if cfg.flip_p > 0 and _uniform(gen) < cfg.flip_p:
        color, sketch = color.flip(-1), sketch.flip(-1)
    h, w = color.shape[-2:]
    if cfg.resize_mode == "cover":
        s = max(crop[0] / h, crop[1] / w) * _uniform(gen, *cfg.scale_range)
    else:
        s = short_edge_target(crop, cfg, gen) / min(h, w)
    size = (max(crop[0], round(h * s)), max(crop[1], round(w * s)))
    color, sketch = resize(color, size), resize(sketch, size)
    top = _randint(gen, 0, size[0] - crop[0])
    left = _randint(gen, 0, size[1] - crop[1])
    sl = (..., slice(top, top + crop[0]), slice(left, left + crop[1]))
    geometry = {"size": torch.tensor([crop[0] * h / size[0], crop[1] * w / size[1]], dtype=torch.float32),
                "crop": torch.tensor([top / size[0], left / size[1], crop[0] / size[0], crop[1] / size[1]],
                                     dtype=torch.float32)}
    return color[sl], sketch[sl], geometry


def to_model_sketch(sketch01: Tensor, invert: bool = True) -> Tensor:
    """Sketch in [0, 1] (any channel count) → 3 channels in [-1, 1], lines +1 (``invert`` for black-on-white)."""
    x = sketch01.mean(0, keepdim=True).expand(3, -1, -1) * 2.0 - 1.0
    return -x if invert else x


def border_blank_sizes(hw: tuple[int, int], cfg: AugmentConfig, gen: torch.Generator) -> tuple[int, int, int, int]:
    """Blanked (top, bottom, left, right) widths in pixels for one sketch."""
    h, w = hw
    if cfg.border_mode == "none":
        return 0, 0, 0, 0
    if cfg.border_mode == "sides":
        fr = [_uniform(gen, 0.0, cfg.border_max_frac) for _ in range(4)]
        return int(fr[0] * h), int(fr[1] * h), int(fr[2] * w), int(fr[3] * w)
    if cfg.border_mode == "official":
        c = min(_randint(gen, 0, cfg.border_max_px), (h - 1) // 2, (w - 1) // 2)
        mode = _randint(gen, 0, 3)
        if mode == 0:
            return c, c, 0, 0
        if mode == 1:
            return 0, 0, c, c
        if mode == 2:
            c2 = min(_randint(gen, 0, cfg.border_max_px_horizontal), (w - 1) // 2)
            return c, c, c2, c2
        return 0, 0, 0, 0
    raise ValueError(f"unknown border_mode {cfg.border_mode!r}; use sides, official or none")


def blank_borders(sketch: Tensor, sizes: tuple[int, int, int, int], fill: float = -1.0) -> Tensor:
    """Set the given border widths of a model-domain sketch to ``fill`` (-1 = no lines)."""
    t, b, l, r = sizes
    h, w = sketch.shape[-2:]
    out = sketch.clone()
    if t:
        out[..., :t, :] = fill
    if b:
        out[..., h - b:, :] = fill
    if l:
        out[..., :, :l] = fill
    if r:
        out[..., :, w - r:] = fill
    return out


def color_jitter(img: Tensor, amount: float, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation factors in ``[1 - amount, 1 + amount]``, on (3, H, W) in [0, 1].

    Extra channels (a mask stacked after RGB by :func:`augment_triplet`) pass through unchanged."""
    if img.shape[0] > 3:
        return torch.cat([color_jitter(img[:3], amount, gen), img[3:]], 0)
    b, c, s = (_uniform(gen, 1 - amount, 1 + amount) for _ in range(3))
    img = img * b
    gray_mean = img.mean()
    img = (img - gray_mean) * c + gray_mean
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (img - gray) * s + gray
    return img.clamp(0, 1)


def _tps_kernel(r2: Tensor) -> Tensor:
    """Thin-plate radial basis ``r² log r²`` (up to a constant factor)."""
    return r2 * torch.log(r2.clamp_min(1e-12))


def tps_warp(img: Tensor, gen: torch.Generator, grid: int = 4, strength: float = 0.08) -> Tensor:
    """Thin-plate-spline warp of (C, H, W): a ``grid``×``grid`` lattice of control points moved by
    ``U(-strength, strength)`` (in [-1, 1] image units); backward mapping, bilinear, border padding."""
    _, h, w = img.shape
    lin = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)
    src = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1).reshape(-1, 2)
    dst = src + (torch.rand(src.shape, generator=gen, dtype=torch.float64) * 2 - 1) * strength
    n = src.shape[0]
    # solve the TPS that maps output (dst) coordinates to input (src) coordinates
    lhs = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    lhs[:n, :n] = _tps_kernel(((dst[:, None] - dst[None]) ** 2).sum(-1))
    poly = torch.cat([torch.ones(n, 1, dtype=torch.float64), dst], 1)
    lhs[:n, n:], lhs[n:, :n] = poly, poly.T
    rhs = torch.zeros(n + 3, 2, dtype=torch.float64)
    rhs[:n] = src
    params = torch.linalg.solve(lhs, rhs)
    ys = torch.linspace(-1.0, 1.0, h, dtype=torch.float64)
    xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    mapped = _tps_kernel(((pts[:, None] - dst[None]) ** 2).sum(-1)) @ params[:n]
    mapped = mapped + torch.cat([torch.ones(len(pts), 1, dtype=torch.float64), pts], 1) @ params[n:]
    grid_xy = mapped.reshape(1, h, w, 2).to(img.dtype)
    return F.grid_sample(img[None], grid_xy, mode="bilinear", padding_mode="border", align_corners=True)[0]


def make_reference(color01: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """The reference from the uncropped colour image: own flip, jitter, TPS, square resize; in [0, 1]."""
    ref = color01
    if cfg.reference_flip_p > 0 and _uniform(gen) < cfg.reference_flip_p:
        ref = ref.flip(-1)
    ref = resize(ref, (cfg.reference_size, cfg.reference_size))
    if cfg.color_jitter_p > 0 and _uniform(gen) < cfg.color_jitter_p:
        ref = color_jitter(ref, cfg.color_jitter, gen)
    if cfg.tps_p > 0 and _uniform(gen) < cfg.tps_p:
        ref = tps_warp(ref, gen, cfg.tps_grid, cfg.tps_strength)
    return ref


def augment_triplet(
    color01: Tensor,
    sketch01: Tensor,
    crop: tuple[int, int],
    cfg: AugmentConfig,
    gen: torch.Generator,
    mask01: Tensor | None = None,
) -> dict[str, Tensor]:
    """(3, H, W) colour and (C, H', W') sketch in [0, 1] → model inputs in [-1, 1]:
    ``sketch`` (3, h, w; lines +1, borders blanked), ``color`` (3, h, w), ``reference`` (3, r, r), and the crop's
    ``size`` and ``crop`` (:func:`joint_resize_crop_geometry`).

    With a foreground ``mask01`` (1, H'', W'') in [0, 1] (v1.5/v2 stages) also ``mask`` (1, h, w), cropped with
    the sketch and colour, and ``reference_mask`` (1, r, r), transformed with the reference: as the official
    ``QuartLoader``, the sketch mask and the reference mask are both the ground truth's mask (the reference *is*
    the ground truth). The mask rides as an extra channel, so the random draws are those of the mask-less call.
    """
    if sketch01.shape[-2:] != color01.shape[-2:]:
        sketch01 = resize(sketch01, tuple(color01.shape[-2:]))
    nm = 0
    if mask01 is not None:
        mask01 = mask01[:1].float()
        if mask01.shape[-2:] != color01.shape[-2:]:
            mask01 = resize(mask01, tuple(color01.shape[-2:]))
        color01, sketch01, nm = torch.cat([color01, mask01], 0), torch.cat([sketch01, mask01], 0), 1
    reference = make_reference(color01, cfg, gen)
    color, sketch01, out = joint_resize_crop_geometry(color01, sketch01, crop, cfg, gen)
    if nm:
        out["mask"], out["reference_mask"] = sketch01[-1:], reference[-1:]
        color, sketch01, reference = color[:-1], sketch01[:-1], reference[:-1]
    sketch = to_model_sketch(sketch01, cfg.invert_sketch)
    sketch = blank_borders(sketch, border_blank_sizes(crop, cfg, gen))
    return {"sketch": sketch, "color": color * 2 - 1, "reference": reference * 2 - 1, **out}


__all__ = [
    "augment_triplet",
    "blank_borders",
    "border_blank_sizes",
    "choose_bucket",
    "color_jitter",
    "joint_resize_crop",
    "joint_resize_crop_geometry",
    "make_reference",
    "resize",
    "short_edge_target",
    "to_model_sketch",
    "tps_warp",
]
