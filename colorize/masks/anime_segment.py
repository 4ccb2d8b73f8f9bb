"""The apps' pre- and post-processing around :class:`~colorize.masks.isnet.ISNetDIS`: ``proceed`` and its callers.

Reproduces ``ISNetDIS.proceed`` of the official ``preprocessor/anime_segment.py`` of
tellurion-kanata/colorizeDiffusion at commit c9bd9fb (the SD2.1 app: 11x11 dilation) and of
tellurion-kanata/ColorizeDiffusionXL at commit ec78784 (the XL app: 21x21 dilation, otherwise identical), and
how the apps call it:

* sketch mask: ``proceed(white_sketch, th=height, tw=width, crop=False)`` on black lines on white in [-1, 1]
  (:func:`sketch_mask`); the SD2.1 app hands the U-Net a bicubic x0.125 resize of it (:func:`latent_mask`).
* reference mask: ``proceed(reference, dilate=True)`` on the reference in [-1, 1] (:func:`reference_mask`).
* previews zero values below the threshold (:func:`threshold_mask`); the colorizer's background-only reference is
  the reference where the mask is below the threshold and white elsewhere (:func:`background_reference`).

Everything takes and returns ``(B, C, H, W)`` float tensors, except the node-friendly wrappers
:func:`anime_mask` and :func:`line_art_mask`, which take ``(B, C, H, W)`` images in [0, 1] and return
``(B, H, W)`` masks in [0, 1] (ComfyUI's MASK layout).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.masks.sketch import Polarity

#: Canvas side the apps use (``s=1024``).
DEFAULT_CANVAS = 1024
#: Dilation (max-pool kernel) of the SD2.1 app's reference mask, and of the XL app's.
DILATE_SD = 11
DILATE_XL = 21
#: The SD2.1 app resizes the sketch mask by this factor for the U-Net (the VAE's 8x downsampling).
LATENT_FACTOR = 0.125
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


@dataclass
class ProceedSteps:
    """What :func:`proceed_steps` computed: the network's input and output, the mask, and the pasted window
    ``(top, left, height, width)`` in the canvas (the whole canvas on the ``crop=False`` path)."""

    net_input: Tensor
    net_output: Tensor
    mask: Tensor
    window: tuple[int, int, int, int]


def _check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return value


def _check_dilate(dilate: int) -> int:
    if isinstance(dilate, bool) or not isinstance(dilate, int) or dilate < 0 or (dilate > 1 and dilate % 2 == 0):
        raise InputError(f"dilate is the max-pool kernel size: 0 (none) or an odd number such as {DILATE_SD} "
                         f"(SD2.1 app) or {DILATE_XL} (XL app); got {dilate!r}")
    return dilate


def dilate_mask(mask: Tensor, kernel: int) -> Tensor:
    """``max_pool2d(mask, kernel, stride=1, padding=kernel // 2)`` (the apps' dilation; 0 or 1 = none)."""
    kernel = _check_dilate(kernel)
    if kernel <= 1:
        return mask
    return F.max_pool2d(mask, kernel_size=kernel, stride=1, padding=kernel // 2)


def proceed_steps(net: nn.Module, x: Tensor, th: int | None = None, tw: int | None = None,
                  canvas: int = DEFAULT_CANVAS, dilate: int = 0, crop: bool = True) -> ProceedSteps:
    """:func:`proceed`, also returning the network's input and output (see :class:`ProceedSteps`)."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise InputError(f"the mask network's input must be a float (B, C, H, W) tensor; got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    s = _check_size(canvas, "canvas")
    dilate = _check_dilate(dilate)
    b, c, h, w = x.shape
    if crop:
        th = h if th is None else _check_size(th, "th")
        tw = w if tw is None else _check_size(tw, "tw")
        scale = s / max(h, w)
        if int(h * scale) < 1 or int(w * scale) < 1:
            raise InputError(f"a {h}x{w} image is too thin for a {s}x{s} canvas: its short side would be 0 pixels; "
                             "use a larger canvas")
        resized = F.interpolate(x, scale_factor=scale, mode="bicubic")
        nh, nw = resized.shape[-2:]
        top, left = (s - nh) // 2, (s - nw) // 2
        net_input = -torch.ones((b, c, s, s), dtype=x.dtype, device=x.device)
        net_input[:, :, top:top + nh, left:left + nw] = resized
        net_input = 1 - (net_input + 1) / 2
        net_output = net(net_input)
        window = (top, left, nh, nw)
        mask = net_output[:, :, top:top + nh, left:left + nw]
    else:
        if th is None or tw is None:
            raise InputError("proceed(crop=False) needs the output size: pass th (height) and tw (width); the "
                             "official code fails with a TypeError here")
        th, tw = _check_size(th, "th"), _check_size(tw, "tw")
        net_input = F.interpolate(x, (s, s), mode="bicubic")
        mask = net_output = net(net_input)
        window = (0, 0, s, s)
    mask = F.interpolate(mask, (th, tw), mode="bicubic").clamp(0, 1)
    return ProceedSteps(net_input, net_output, dilate_mask(mask, dilate), window)


def proceed(net: nn.Module, x: Tensor, th: int | None = None, tw: int | None = None,
            canvas: int = DEFAULT_CANVAS, dilate: int = 0, crop: bool = True) -> Tensor:
    """The official ``ISNetDIS.proceed``: a ``(B, out_ch, th, tw)`` mask in [0, 1] for ``x`` ``(B, C, H, W)``.

    ``crop=True`` (the reference path): ``th, tw`` default to ``H, W``; ``scale = canvas / max(H, W)``; ``x`` is
    bicubic-resized with ``scale_factor=scale`` (so PyTorch maps coordinates with ``1 / scale``), pasted centred
    on a ``canvas`` x ``canvas`` canvas of -1 and the whole canvas mapped by ``v -> 1 - (v + 1) / 2``, which
    *inverts* [-1, 1] to [1, 0] (the padding becomes 1). The network's output is cropped to the pasted window,
    bicubic-resized to ``(th, tw)`` and clamped to [0, 1].

    Official quirk, reproduced: the resized size is ``(int(H * scale), int(W * scale))``, and because ``scale`` is
    a rounded float the long side can come out one pixel short, ``canvas - 1`` (long sides 49, 98, 103, 107, ...
    for canvases of 64 or 1024). The pasted window is then one pixel short of the canvas, whose last row (or
    column) stays padding, and since the bicubic resize maps coordinates with ``1 / scale`` the window covers
    the input only up to about one canvas pixel before its far edge (for 98 rows on a 64 canvas: window rows
    0..62 sample input rows up to 95.2 of 0..97). Resizing the window back to ``(th, tw)`` therefore stretches
    the mask by one canvas pixel along that side. The returned mask still has exactly the ``(th, tw)`` size.

    ``crop=False`` (the sketch path): ``x`` is bicubic-resized to ``canvas`` x ``canvas`` (aspect not kept) and
    given to the network as it is (no inversion); ``th`` and ``tw`` are required (:class:`InputError`).

    ``dilate`` is the max-pool kernel applied last with stride 1 and ``padding = dilate // 2``: 0 = none,
    :data:`DILATE_SD` = 11 (SD2.1 app), :data:`DILATE_XL` = 21 (XL app).
    """
    return proceed_steps(net, x, th, tw, canvas, dilate, crop).mask


def sketch_mask(net: nn.Module, line_art: Tensor, height: int, width: int, canvas: int = DEFAULT_CANVAS) -> Tensor:
    """The apps' sketch-mask call: ``line_art`` is black lines (-1) on white (+1) ``(B, 3, H, W)`` (the apps'
    ``white_sketch``); returns ``(B, 1, height, width)`` (``crop=False``, no dilation)."""
    return proceed(net, line_art, height, width, canvas=canvas, dilate=0, crop=False)


def reference_mask(net: nn.Module, image: Tensor, canvas: int = DEFAULT_CANVAS, dilate: int = DILATE_SD) -> Tensor:
    """The apps' reference-mask call on ``image`` in [-1, 1] ``(B, 3, H, W)``: ``(B, 1, H, W)`` (``crop=True``,
    dilated by ``dilate``: 11 as in the SD2.1 app, 21 as in the XL app, 0 for none)."""
    return proceed(net, image, canvas=canvas, dilate=dilate, crop=True)


def latent_mask(mask: Tensor, factor: float = LATENT_FACTOR) -> Tensor:
    """Bicubic resize of a ``(B, 1, H, W)`` mask by ``factor`` (``scale_factor``, so the size is
    ``floor(H * factor)``): what the SD2.1 app hands the U-Net for the sketch mask."""
    return F.interpolate(mask, scale_factor=factor, mode="bicubic")


def threshold_mask(mask: Tensor, t: float) -> Tensor:
    """The apps' mask preview: values below ``t`` set to 0, the others kept."""
    return torch.where(mask < t, torch.zeros_like(mask), mask)


def background_reference(image: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """The colorizer's background-only reference: ``image`` where ``mask < threshold``, white (1) elsewhere.

    ``image`` is ``(B, C, H, W)`` ([-1, 1] or [0, 1]: white is 1 in both), ``mask`` ``(B|1, 1, H, W)`` or
    ``(B|1, H, W)`` of the same size.
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:]:
        raise InputError(f"the mask {tuple(mask.shape)} must be (B, 1, H, W) with the image's size "
                         f"{tuple(image.shape[-2:])}")
    return torch.where(mask < threshold, image, torch.ones_like(image))


# ---------------------------------------------------------------------------------------------
# Node-friendly wrappers: [0, 1] images in, (B, H, W) masks of the input's size out
# ---------------------------------------------------------------------------------------------


def _rgb01(images: Tensor, what: str) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise InputError(f"{what} must be a (B, C, H, W) image tensor with 1, 3 or 4 channels in [0, 1]; got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if images.shape[0] == 0 or images.shape[-1] < 1 or images.shape[-2] < 1:
        raise InputError(f"{what} is empty: shape {tuple(images.shape)}")
    x = images.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{what} holds NaN or infinite values")
    x = x[:, :3] if x.shape[1] == 4 else x
    return (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).clamp(0, 1)


#: An image whose pixels all lie within this of each other (one 8-bit step) has nothing to segment.
BLANK_RANGE = 1 / 255


def _run_each(net: nn.Module, x: Tensor, fn) -> Tensor:  # type: ignore[no-untyped-def]
    """``fn`` on each image (one at a time bounds the memory at canvas 1024). A blank image (every pixel within
    :data:`BLANK_RANGE` of the others: an empty page, a flat colour) gets an empty mask without running the
    network: it has no foreground, and the official apps' network output on it is not defined by anything the
    image shows (a deviation from the apps, which would run it)."""
    p = next(net.parameters())
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            image = x[i:i + 1]
            if float(image.amax() - image.amin()) <= BLANK_RANGE:
                out.append(torch.zeros(1, 1, *image.shape[-2:], device=x.device))
                continue
            out.append(fn(image.to(device=p.device, dtype=p.dtype)).float().to(x.device))
    return torch.cat(out)[:, 0].clamp(0, 1)


def anime_mask(net: nn.Module, images: Tensor, canvas: int = DEFAULT_CANVAS, dilate: int = DILATE_SD) -> Tensor:
    """Foreground mask of anime images (the apps' reference call, ISNet weights ``isnetis``).

    ``images`` ``(B, C, H, W)`` in [0, 1] (C = 1, 3 or 4; alpha is dropped) -> ``(B, H, W)`` float32 in [0, 1],
    1 = foreground, exactly ``H x W``. Each image goes through :func:`reference_mask` (``crop=True``, mapped to
    [-1, 1] first as the apps do). The official crop path's window can be one pixel short of the canvas (see
    :func:`proceed`); that is kept so the mask equals the app's, and the final resize to ``(H, W)`` brings the
    mask back to exactly the input's size.
    """
    x = _rgb01(images, "images")
    _check_size(canvas, "canvas")
    _check_dilate(dilate)
    return _run_each(net, x, lambda im: reference_mask(net, im * 2 - 1, canvas=canvas, dilate=dilate))


def _dark_lines(x: Tensor, polarity: Polarity) -> Tensor:
    """``x`` (B, 3, H, W) in [0, 1] as black lines on white."""
    if polarity == "dark_lines":
        return x
    if polarity == "light_lines":
        return 1 - x
    if polarity == "auto":
        gray = (x * torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1)
        dark = gray.flatten(1).median(dim=1).values > 0.5  # paper covers most of a sketch
        return torch.where(dark.view(-1, 1, 1, 1), x, 1 - x)
    raise InputError(f"polarity must be 'dark_lines', 'light_lines' or 'auto'; got {polarity!r}")


def line_art_mask(net: nn.Module, images: Tensor, canvas: int = DEFAULT_CANVAS,
                  polarity: Polarity = "dark_lines") -> Tensor:
    """Foreground mask of line art (the apps' sketch call, ISNet weights ``sketch-segment``).

    ``images`` ``(B, C, H, W)`` in [0, 1]; with ``polarity="dark_lines"`` black lines on white (what the apps
    feed: ``white_sketch``), ``"light_lines"`` for white lines on black, ``"auto"`` per image from the median
    brightness. Returns ``(B, H, W)`` float32 in [0, 1], exactly ``H x W`` (:func:`sketch_mask` with
    ``height, width = H, W``; the crop=False path resizes straight back to that size).
    """
    x = _dark_lines(_rgb01(images, "line art"), polarity)
    _check_size(canvas, "canvas")
    h, w = x.shape[-2:]
    return _run_each(net, x, lambda im: sketch_mask(net, im * 2 - 1, h, w, canvas=canvas))


__all__ = [
    "DEFAULT_CANVAS",
    "DILATE_SD",
    "DILATE_XL",
    "LATENT_FACTOR",
    "ProceedSteps",
    "anime_mask",
    "background_reference",
    "dilate_mask",
    "latent_mask",
    "line_art_mask",
    "proceed",
    "proceed_steps",
    "reference_mask",
    "sketch_mask",
    "threshold_mask",
]
