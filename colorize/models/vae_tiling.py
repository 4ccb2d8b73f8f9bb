"""Tiled VAE decode / encode for large images (peak memory at 1024², 1024² on an 8 GB card).

The kl-f8 decoder's last levels dominate the memory of a generation: at 1024² the full-resolution level
holds 128–256 float32 channels of 1024² pixels (0.5–1 GiB per tensor, ~4 GiB at the decode's peak).
Decoding overlapping latent tiles one at a time bounds that to the tile size; the tiles are blended with
linear feathering over their overlaps (weights normalised by their sum, so any overlap ≥ the ramp works).

Not exact: the decoder's GroupNorms take their statistics over the spatial extent they see, and its mid-block
attention is global, so a tile sees other statistics and fewer positions than the whole image. With a single
tile covering the whole latent the result *is* the untiled decode (the same call, bit for bit). The
automatic rule (:func:`use_tiling`) tiles only above :data:`AUTO_TILE_PIXELS` output pixels, so the
default sizes (and the parity fixtures) keep the exact path.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor, nn

from colorize.models.vae import DiagonalGaussian

TilingMode = Union[Literal["off", "on", "auto"], bool, "VaeTiling"]
TILING_MODES = ("off", "auto", "on")
#: "auto" tiles when the decoded image has more pixels than this (above the thesis' largest size, 1024²)
AUTO_TILE_PIXELS = 1024 * 1024
#: default tile and overlap in latent pixels (×8 in image pixels: 512 px tiles, 128 px overlap)
DEFAULT_TILE = 64
DEFAULT_OVERLAP = 16


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with about ``overlap`` shared, spread
    evenly (first at 0, last ending at ``length``) and rounded to multiples of ``align`` (``length`` and
    ``tile`` must then be multiples too); ``[0]`` when one tile covers everything."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1) / align) * align for i in range(n)]


def _ramp(size: int, ramp: int, left: bool, right: bool) -> Tensor:
    """1-D blend weights of one tile: linear from ~0 to 1 over ``ramp`` samples on each side that has a
    neighbour, 1 elsewhere (never 0, so every output sample has a positive weight sum)."""
    w = torch.ones(size)
    if ramp > 0:
        edge = ((torch.arange(size, dtype=torch.float32) + 0.5) / ramp).clamp(max=1.0)
        if left:
            w = torch.minimum(w, edge)
        if right:
            w = torch.minimum(w, edge.flip(0))
    return w


def tiled_apply(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, scale: float,
                align: int = 1) -> Tensor:
    """``fn`` (a spatial map whose output is ``scale`` × the input size) over overlapping tiles of ``x``
    (b, c, h, w), blended with linear feathering; exactly ``fn(x)`` when one tile covers ``x``. Tile starts
    are multiples of ``align`` (the downsampling factor when ``scale`` < 1)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x)
    out = weight = None
    ramp = round(overlap * scale)
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h - y0), min(tile, w - x0)
            piece = fn(x[..., y0:y0 + th, x0:x0 + tw]).float()
            oy, ox, oh, ow = round(y0 * scale), round(x0 * scale), piece.shape[-2], piece.shape[-1]
            if out is None:
                out = piece.new_zeros(*piece.shape[:-2], round(h * scale), round(w * scale))
                weight = piece.new_zeros(round(h * scale), round(w * scale))
            wy = _ramp(oh, ramp, y0 > 0, y0 + th < h).to(piece.device)
            wx = _ramp(ow, ramp, x0 > 0, x0 + tw < w).to(piece.device)
            wt = wy[:, None] * wx[None, :]
            out[..., oy:oy + oh, ox:ox + ow] += piece * wt
            weight[oy:oy + oh, ox:ox + ow] += wt
            del piece
    return (out / weight).to(x.dtype if x.is_floating_point() else torch.float32)


def _factor(vae: nn.Module) -> int:
    return int(vae.cfg.downsample_factor)


@torch.no_grad()
def tiled_decode(vae: nn.Module, z: Tensor, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> Tensor:
    """``vae.decode(z)`` over overlapping latent tiles of ``tile`` latent pixels (``overlap`` shared, feathered).

    ``z`` is the raw (unscaled) latent (b, embed_dim, h, w) on the VAE's device; odd sizes are fine."""
    return tiled_apply(vae.decode, z, tile, overlap, float(_factor(vae)))


@torch.no_grad()
def tiled_encode(vae: nn.Module, x: Tensor, tile: int = 8 * DEFAULT_TILE, overlap: int = 8 * DEFAULT_OVERLAP
                 ) -> DiagonalGaussian:
    """``vae.encode(x)`` over overlapping image tiles (``tile``/``overlap`` in image pixels, multiples of the
    VAE factor); the posterior moments (mean, log-variance) are blended, then the posterior is formed."""
    f = _factor(vae)
    if tile % f or overlap % f or x.shape[-2] % f or x.shape[-1] % f:
        raise ValueError(f"image size, tile and overlap must be multiples of {f} pixels, got "
                         f"{tuple(x.shape[-2:])}, {tile}, {overlap}")
    moments = tiled_apply(lambda t: vae.quant_conv(vae.encoder(t)), x, tile, overlap, 1.0 / f, align=f)
    return DiagonalGaussian(moments)


@dataclass(frozen=True)
class VaeTiling:
    """A tiling choice with its sizes: ``mode`` (off/auto/on), ``tile`` and ``overlap`` in latent pixels,
    ``auto_pixels`` the image size above which ``auto`` tiles."""

    mode: str = "auto"
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    auto_pixels: int = AUTO_TILE_PIXELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", check_mode(self.mode))
        tile_starts(0, self.tile, self.overlap)  # validates tile and overlap


def check_mode(mode: TilingMode) -> str:
    """``True``/``False`` or one of :data:`TILING_MODES` → the mode name."""
    if mode is True or mode is False:
        return "on" if mode else "off"
    if mode not in TILING_MODES:
        raise ValueError(f"VAE tiling must be one of {', '.join(TILING_MODES)}, got {mode!r}")
    return str(mode)


def as_tiling(choice: TilingMode | VaeTiling) -> VaeTiling:
    """A mode name / bool (default sizes) or a :class:`VaeTiling` → a :class:`VaeTiling`."""
    return choice if isinstance(choice, VaeTiling) else VaeTiling(check_mode(choice))


def use_tiling(choice: TilingMode | VaeTiling, image_hw: tuple[int, int]) -> bool:
    """Whether to tile a decode to an image of ``image_hw``: ``on`` always, ``off`` never, ``auto`` above
    ``auto_pixels`` pixels (default :data:`AUTO_TILE_PIXELS`)."""
    t = as_tiling(choice)
    return t.mode == "on" or (t.mode == "auto" and image_hw[0] * image_hw[1] > t.auto_pixels)


@torch.no_grad()
def decode(vae: nn.Module, z: Tensor, tiling: TilingMode | VaeTiling = "off") -> Tensor:
    """``vae.decode(z)``, tiled (:func:`tiled_decode`) when :func:`use_tiling` says so for this latent's image."""
    t, f = as_tiling(tiling), _factor(vae)
    if use_tiling(t, (int(z.shape[-2]) * f, int(z.shape[-1]) * f)):
        return tiled_decode(vae, z, t.tile, t.overlap)
    return vae.decode(z)


__all__ = ["AUTO_TILE_PIXELS", "DEFAULT_OVERLAP", "DEFAULT_TILE", "TILING_MODES", "VaeTiling", "as_tiling",
           "check_mode", "decode",
           "tile_starts", "tiled_apply", "tiled_decode", "tiled_encode", "use_tiling"]
