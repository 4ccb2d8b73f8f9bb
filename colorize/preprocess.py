"""Input preprocessing: image loading, sketch polarity and fitting, reference tensors, sizes and their limits.

Conventions (thesis §5.3; official ``backend/functool.py``): images are tensors in [-1, 1];
a sketch fed to the sketch encoder has **lines = +1 and background = -1**; the target size is
a multiple of 64 (the sketch encoder's deepest hint is at stride 64).
"""
from __future__ import annotations

import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from colorize.errors import InputError, SizeLimitError

SketchPolarity = Literal["invert", "keep", "auto"]
SIZE_MULTIPLE = 64
#: The VAE's downsampling: every output side is at least a multiple of it (SD2.1 sizes are rounded to 64, XL's
#: must be multiples of 32).
LATENT_MULTIPLE = 8
#: Environment variable: the most pixels (width × height) an image file may declare before :func:`load_image`
#: refuses it (a whole number; 0 = no limit). Unset: Pillow's own refusal threshold, ``2 × Image.MAX_IMAGE_PIXELS``.
INPUT_PIXELS_ENV = "COLORIZE_MAX_INPUT_PIXELS"
#: Modes that :func:`load_image` reduces as they are (the others become RGB / RGBA first, as ``pil_to_tensor`` would).
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")
_PIL_LIMIT_LOCK = threading.Lock()

#: Default largest output side in pixels, for every family (``Family.max_output_side``; see :func:`output_limits`).
DEFAULT_MAX_OUTPUT_SIDE = 4096
#: Default largest output area in pixels (2048², e.g. 2048×2048 or 4096×1024), for every family
#: (``Family.max_output_pixels``).
DEFAULT_MAX_OUTPUT_PIXELS = 2048 * 2048
#: Environment variables that replace the families' output limits (whole numbers of pixels; ``0`` = no limit;
#: ``COLORIZE_MAX_PIXELS`` also takes ``WxH``). The settings fields ``max_output_side`` / ``max_output_pixels``
#: win over them.
MAX_SIDE_ENV = "COLORIZE_MAX_SIDE"
MAX_PIXELS_ENV = "COLORIZE_MAX_PIXELS"


@dataclass(frozen=True)
class OutputLimits:
    """The output size limits in effect: ``side`` (largest width or height) and ``pixels`` (largest width × height),
    ``0`` = no limit; ``*_source`` says where each came from (for the error message)."""

    side: int
    pixels: int
    side_source: str = "default"
    pixels_source: str = "default"


def output_limits(family: Any = None, max_side: int | None = None, max_pixels: int | None = None) -> OutputLimits:
    """The output size limits of a generation: ``max_side`` / ``max_pixels`` when given (the settings fields), else
    the environment variables :data:`MAX_SIDE_ENV` / :data:`MAX_PIXELS_ENV`, else the family's
    ``max_output_side`` / ``max_output_pixels``; without a family (nothing loaded yet, e.g. the CLI's check before
    loading) the defaults, which no registered family exceeds (a family may lower them, not raise them).

    Why the defaults (:data:`DEFAULT_MAX_OUTPUT_SIDE` = 4096, :data:`DEFAULT_MAX_OUTPUT_PIXELS` = 2048²): every
    family has the SD2.1 backbone with an 8× latent, so an H×W output gives the top U-Net level
    ``N = H·W / 64`` tokens (65,536 at 2048²; v2's 768² base is 9,216) and its self-attention costs ``N²``: with up
    to three CFG rows (reference and sketch guidance) and five heads, an attention matrix materialised in fp16 would
    take ``3 · 5 · N² · 2`` bytes: 0.5 GB at 512², 8 GB at 1024², 129 GB at 2048². PyTorch's memory-efficient and
    flash kernels (CUDA, used by :func:`colorize.models.attention.attend_heads`) never materialise it, so memory
    grows only with ``N``: at 2048² the largest U-Net activations are about 1 GB (3 rows × 65,536 tokens × 2,560
    GEGLU channels in fp16). The largest single cost is the untiled fp32 VAE decode, linear in the pixel count:
    1.0 GB of activations measured for a 512² decode (CPU, peak RSS), so about 16 GB at 2048², which with the
    ~6 GB of weights (fp16 U-Net, fp32 CLIP ViT-H and VAE) still fits a 24 GB card (VAE tiling,
    ``vae_tiling="auto"``, leaves more room). The attention compute still grows with ``N²``: 2048² is 256× the
    attention work of 512² (tens of seconds per image at 20 steps on a 24 GB card); 4096² would be 16× more again
    and need ~64 GB for the untiled decode. Sides up to 4096 (the nodes' widget maximum) allow long outputs within
    the same area (4096×1024). On a bigger card, or with ``--low-vram`` / VAE tiling, raise the limits with the
    variables or fields; ``0`` removes a limit.
    """
    side, side_source = _limit(max_side, "max_output_side", MAX_SIDE_ENV)
    pixels, pixels_source = _limit(max_pixels, "max_output_pixels", MAX_PIXELS_ENV)
    if side is None:
        side, side_source = int(getattr(family, "max_output_side", DEFAULT_MAX_OUTPUT_SIDE)), "default"
    if pixels is None:
        pixels, pixels_source = int(getattr(family, "max_output_pixels", DEFAULT_MAX_OUTPUT_PIXELS)), "default"
    return OutputLimits(side, pixels, side_source, pixels_source)


def _limit(value: int | None, field: str, env: str) -> tuple[int | None, str]:
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{field} must be a whole number of pixels (0 = no limit, None = default), got {value!r}")
        return value, field
    text = os.environ.get(env, "").strip()
    if not text:
        return None, ""
    m = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", text) if env == MAX_PIXELS_ENV else None
    if m:
        return int(m[1]) * int(m[2]), env
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        extra = " or WxH" if env == MAX_PIXELS_ENV else ""
        raise InputError(f"environment variable {env} must be a whole number of pixels{extra} (0 = no limit), "
                         f"got {text!r}")
    return number, env


def check_output_size(height: int | None, width: int | None, limits: OutputLimits, label: str | None = None) -> None:
    """A :class:`~colorize.errors.SizeLimitError` when an output of ``height`` × ``width`` pixels (``None`` = not
    known yet) is above ``limits``; ``label`` names the size in the message (default ``output size WxH px``)."""
    shown = label or f"output {_dims(height, width)} px"
    if limits.side:
        for name, value in (("width", width), ("height", height)):
            if value is not None and value > limits.side:
                raise SizeLimitError(f"{shown}: the {name} is above the limit of {limits.side} px per side"
                                     f"{_raise_hint(MAX_SIDE_ENV, 'max_output_side', limits.side_source)}")
    if limits.pixels and width is not None and height is not None and width * height > limits.pixels:
        root = math.isqrt(limits.pixels)
        square = f" = {root}x{root}" if root * root == limits.pixels else ""
        raise SizeLimitError(f"{shown}: {width * height:,} pixels, above the limit of {limits.pixels:,} pixels{square}"
                             f"{_raise_hint(MAX_PIXELS_ENV, 'max_output_pixels', limits.pixels_source)}")


def check_requested_size(width: int | None, height: int | None, limits: OutputLimits,
                         sketch_hw: tuple[int, int] | None = None, base: int = 512) -> None:
    """:func:`check_output_size` of a requested width/height (``None`` or 0 = automatic): with ``sketch_hw`` (the
    sketch's height, width) the size that will run (:func:`target_size` with ``base``, a missing side following the
    sketch's aspect), else the sides given, rounded to multiples of 64, and their product when both are."""
    width, height = width or None, height or None
    if sketch_hw is not None and not (width and height):
        h, w = target_size(sketch_hw, width, height, base)
        how = f"{_dims(height, width)} given, the other side" if (width or height) else f"about {base}² in area"
        label = f"output size {w}x{h} px ({how} from the {sketch_hw[1]}x{sketch_hw[0]} sketch's aspect)"
    else:
        h, w = height and round_size(height), width and round_size(width)
        label = f"output {_dims(height, width)} px"
        if (h, w) != (height, width):
            label += f" ({_dims(h, w).split(' ', 1)[1]} after rounding to multiples of 64)"
    check_output_size(h, w, limits, label)


def _dims(height: int | None, width: int | None) -> str:
    if height is None:
        return f"width {width}"
    if width is None:
        return f"height {height}"
    return f"size {width}x{height}"


def _raise_hint(env: str, field: str, source: str) -> str:
    where = f" (set by {source})" if source != "default" else ""
    return (f"{where}; choose a smaller width/height, or raise the limit with the environment variable {env} or "
            f"the setting {field} (0 = no limit)")


def input_pixel_limit() -> int:
    """The most pixels an image file may declare for :func:`load_image` (0 = no limit): ``$COLORIZE_MAX_INPUT_PIXELS``
    when set, else Pillow's refusal threshold as the process has it (``2 × Image.MAX_IMAGE_PIXELS``: 178,956,970 px,
    about 13,377², with Pillow's default; no limit when a host set it to ``None``).

    Pillow warns (``DecompressionBombWarning``) between ``MAX_IMAGE_PIXELS`` and twice that and refuses above.
    The warning band is accepted here without a warning: such a file is an ordinary large photo or scan, and
    :func:`load_image` decodes it scaled down, so it costs little memory. Above the limit the file is refused with
    a :class:`~colorize.errors.SizeLimitError` before anything is decoded. Pillow's own setting is never changed for
    the rest of the process (ComfyUI shares it): only to read the size of a file above Pillow's threshold is the
    check switched off, for the one ``Image.open`` (header only), under a lock."""
    text = os.environ.get(INPUT_PIXELS_ENV, "").strip()
    if text:
        try:
            number = int(text)
        except ValueError:
            number = -1
        if number < 0:
            raise InputError(f"environment variable {INPUT_PIXELS_ENV} must be a whole number of pixels "
                             f"(0 = no limit), got {text!r}")
        return number
    pil = Image.MAX_IMAGE_PIXELS
    return 0 if pil is None else 2 * int(pil)


def load_image(path: str | Path, max_side: int | None = None) -> torch.Tensor:
    """Read an image file as a ``(1, 3, H, W)`` float tensor in [0, 1].

    Grayscale, palette, 16-bit and CMYK images become RGB; transparency is composited
    over white (a transparent line-art background is paper, not black).

    Large files are decoded scaled down, never at full size in float: an image whose longer side is at least twice
    ``max_side`` (default: the output side limit, ``output_limits().side``, 4096; 0 = never) is
    reduced by the largest whole factor that keeps its longer side at least ``max_side``: JPEGs by the decoder
    itself (``Image.draft``: 1/2, 1/4, 1/8), then any remaining factor by averaging ``Image.reduce`` boxes (alpha
    premultiplied). No output needs more: the sketch and masks are fitted into the output keeping their aspect, the
    reference is squashed to 224² or to the output size. Smaller images load exactly as they are. A file declaring
    more pixels than :func:`input_pixel_limit` is a :class:`~colorize.errors.SizeLimitError`.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file: name an image in it")
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    side = output_limits().side if max_side is None else int(max_side)
    try:
        with _open_within_limit(path) as im:
            im = _reduced(im, side)
            im = ImageOps.exif_transpose(im)
            return pil_to_tensor(im)
    except Image.DecompressionBombError as e:  # a check Pillow makes while decoding (e.g. a GIF frame)
        raise SizeLimitError(f"{path}: {e} Use a smaller image, or raise the limit with the environment variable "
                             f"{INPUT_PIXELS_ENV} (pixels; 0 = no limit)") from e
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read {path} as an image ({e}); use a PNG, JPEG or WebP file") from e


def _open_within_limit(path: Path) -> Image.Image:
    """``Image.open`` (header only) with :func:`input_pixel_limit` instead of Pillow's own bomb check."""
    limit = input_pixel_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the warning band is accepted
            im = Image.open(path)
    except Image.DecompressionBombError:  # above Pillow's threshold: read the size with its check off
        with _PIL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if limit and w * h > limit:
        im.close()
        root = math.isqrt(limit)
        raise SizeLimitError(f"{path} is {w}x{h} = {w * h:,} pixels, above the input limit of {limit:,} pixels (about "
                             f"{root}x{root}, a guard against decompression bombs): use a smaller image, or raise the "
                             f"limit with the environment variable {INPUT_PIXELS_ENV} (pixels; 0 = no limit)")
    return im


def _reduced(im: Image.Image, side: int) -> Image.Image:
    """``im`` decoded at 1/f of its size, f the largest whole factor keeping its longer side ≥ ``side``
    (``im`` itself when f < 2): JPEG DCT scaling first, then box averaging (see :func:`load_image`)."""
    if side <= 0 or max(im.size) // side < 2:
        return im
    factor = max(im.size) // side
    im.draft(None, (max(1, im.width // factor), max(1, im.height // factor)))  # JPEG only: no-op elsewhere
    factor = max(im.size) // side
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):  # reduce has no 16-bit modes: through 32-bit integers, back to the same mode
        return im.convert("I").reduce(factor).convert(im.mode)
    if im.mode not in _REDUCIBLE_MODES:  # palette, bilevel, CMYK, ...: the colours pil_to_tensor would make
        alpha = im.mode in ("PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if alpha else "RGB")
    return im.reduce(factor)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image of any mode → ``(1, 3, H, W)`` float in [0, 1] (alpha over white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / peak, 0.0, 1.0).astype(np.float32)
        return torch.from_numpy(gray)[None, None].expand(1, 3, *gray.shape).contiguous()
    if im.mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return torch.from_numpy(gray)[None, None].expand(1, 3, *gray.shape).contiguous()
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = np.array(im.convert("RGB"))  # uint8 (H, W, 3), writable: reordered to (3, H, W) before it becomes float
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div_(255.0)[None]


def tensor_to_pil(image: torch.Tensor) -> list[Image.Image]:
    """``(B, 3, H, W)`` in [-1, 1] → list of 8-bit RGB PIL images."""
    x = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in x]


def check_image(image: torch.Tensor, name: str, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Validate a ``(B, C, H, W)`` image tensor and return it as float.

    1-channel images become 3-channel; 4-channel ones are composited over white (as
    :func:`load_image` does: a transparent line-art background is paper). Integer tensors
    (uint8 / uint16 / int) are scaled to [0, 1]. Float values must lie in ``value_range``.
    """
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise InputError(f"{name} must have shape (B, C, H, W); got {tuple(image.shape)}")
    if image.shape[1] not in (1, 3, 4):
        raise InputError(f"{name} must have 1, 3 or 4 channels; got {image.shape[1]}")
    if image.shape[-1] < 8 or image.shape[-2] < 8:
        raise InputError(f"{name} is too small ({image.shape[-2]}x{image.shape[-1]} px); use at least 8x8")
    if not image.is_floating_point():
        peak = 255.0 if image.dtype == torch.uint8 else float(max(int(image.max()), 1))
        image = image.float() / (65535.0 if peak > 255 else peak)
        image = image * (value_range[1] - value_range[0]) + value_range[0]
    image = image.float()
    if not torch.isfinite(image).all():
        raise InputError(f"{name} contains NaN or infinite values; check the node or code that produced it")
    lo, hi = float(image.min()), float(image.max())
    tol = 1e-3 * (value_range[1] - value_range[0])
    if lo < value_range[0] - tol or hi > value_range[1] + tol:
        raise InputError(
            f"{name} values must lie in [{value_range[0]:g}, {value_range[1]:g}]; got [{lo:.4g}, {hi:.4g}]. "
            "Convert 0..255 images with x / 255 and [-1, 1] images with (x + 1) / 2."
        )
    image = image.clamp(*value_range)
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    elif image.shape[1] == 4:
        lo_v, hi_v = value_range
        alpha = (image[:, 3:] - lo_v) / (hi_v - lo_v)
        image = image[:, :3] * alpha + hi_v * (1 - alpha)  # over white
    return image


def to_signed(image01: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1]."""
    return image01 * 2.0 - 1.0


def round_size(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    """Nearest positive multiple of ``multiple``."""
    return max(multiple, int(round(value / multiple)) * multiple)


def target_size(
    sketch_hw: tuple[int, int], width: int | None = None, height: int | None = None, base: int = 512
) -> tuple[int, int]:
    """Output ``(height, width)``, multiples of 64.

    Given sizes are rounded to the nearest multiple of 64. A missing side (``None`` or 0) follows the
    sketch's aspect ratio; with neither, the area is about ``base``² (512 for v1).
    """
    h, w = sketch_hw
    width, height = width or None, height or None
    if width is not None and height is not None:
        return round_size(height), round_size(width)
    if width is not None:
        return round_size(width * h / w), round_size(width)
    if height is not None:
        return round_size(height), round_size(height * w / h)
    s = base / math.sqrt(h * w)
    return round_size(h * s), round_size(w * s)


def is_dark_on_light(image01: torch.Tensor) -> bool:
    """True when the image is mostly light (dark lines on paper), judged by its median."""
    return bool(image01.float().mean(1).median() > 0.5)


def prepare_sketch(
    sketch01: torch.Tensor, size: tuple[int, int], polarity: SketchPolarity = "auto"
) -> torch.Tensor:
    """Line art in [0, 1] → ``(B, 3, H, W)`` in [-1, 1] with lines +1, fitted and padded.

    ``polarity``: ``invert`` for black lines on white (the official default), ``keep`` for
    white lines on black, ``auto`` picks by the median brightness. The sketch keeps its aspect
    ratio (bicubic, antialiased, fit inside ``size``) and is centre-padded with -1 (no lines).
    """
    sketch01 = check_image(sketch01, "sketch")
    if polarity not in ("invert", "keep", "auto"):
        raise InputError(f"unknown sketch polarity {polarity!r}; use 'invert', 'keep' or 'auto'")
    invert = polarity == "invert" or (polarity == "auto" and is_dark_on_light(sketch01))
    x = to_signed(sketch01)
    x = -x if invert else x
    return fit_and_pad(x, size, fill=-1.0)


def content_box(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of an ``hw`` image fitted (aspect kept) and centred in ``size``,
    as :func:`fit_and_pad` places it: the un-padded sketch area of the result (the official "Crop result")."""
    (h, w), (H, W) = hw, size
    r = min(H / h, W / w)
    nh, nw = max(1, int(h * r)), max(1, int(w * r))
    return (H - nh) // 2, (W - nw) // 2, nh, nw


def fit_and_pad(x: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Resize ``x`` to fit inside ``size`` keeping its aspect, then centre-pad with ``fill``
    (the content lands at :func:`content_box`)."""
    H, W = size
    if H % LATENT_MULTIPLE or W % LATENT_MULTIPLE or H <= 0 or W <= 0:  # each family checks its own multiple
        raise InputError(f"target size {H}x{W} is not a multiple of {LATENT_MULTIPLE}; use e.g. "
                         f"{round_size(H)}x{round_size(W)}")
    h, w = x.shape[-2:]
    top, left, nh, nw = content_box((int(h), int(w)), size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return F.pad(x, (left, W - nw - left, top, H - nh - top), value=fill)


def crop_to_box(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop ``(..., H, W)`` to a :func:`content_box` ``(top, left, height, width)``."""
    top, left, h, w = box
    if top < 0 or left < 0 or top + h > image.shape[-2] or left + w > image.shape[-1]:
        raise InputError(f"crop box {box} lies outside the {tuple(image.shape[-2:])} image")
    return image[..., top:top + h, left:left + w]


def pad_width(image: torch.Tensor, pad_scale: float, fill: float) -> torch.Tensor:
    """Pad ``(..., H, W)`` to width ``int(W · pad_scale)`` with ``fill``, the content centred.

    The official "Reference padding scale" (``backend/functool.py:120-128``, ``pad_scale`` in [1, 2], white padding) widens the
    reference (and a background image) before CLIP squashes it to 224², so the subject looks narrower.
    Where the official puts the padding is not recorded; here it is split evenly (left gets the smaller half)."""
    if not math.isfinite(float(pad_scale)) or not 1.0 <= float(pad_scale) <= 2.0:
        raise InputError(f"reference padding scale must be between 1 and 2, got {pad_scale!r}")
    w = int(image.shape[-1])
    extra = int(w * float(pad_scale)) - w
    if extra <= 0:
        return image
    left = extra // 2
    return F.pad(image, (left, extra - left), value=fill)


def pad_reference(reference01: torch.Tensor, pad_scale: float) -> torch.Tensor:
    """Reference (or background) image in [0, 1] padded with white to ``pad_scale`` × its width (the official reference padding)."""
    return pad_width(check_image(reference01, "reference"), pad_scale, fill=1.0)


def remove_background(
    image: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5, white: float = 1.0
) -> torch.Tensor:
    """The official "Remove background in result" (``backend/appfunc.py`` post-processing): keep pixels where ``mask >= threshold``, else ``white``.

    ``image``: ``(B, C, H, W)`` (white = 1 in both [0, 1] and [-1, 1]); ``mask``: ``(B, H, W)`` or
    ``(B, 1, H, W)`` in [0, 1], 1 = foreground, batch 1 or B, bilinearly resized to the image when its
    size differs (e.g. a sketch mask from the sketch's own frame)."""
    if image.ndim != 4:
        raise InputError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"mask threshold must be between 0 and 1, got {threshold!r}")
    m = mask.float()
    m = m[:, None] if m.ndim == 3 else m
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] not in (1, image.shape[0]):
        raise InputError(f"mask must be (B, H, W) with batch 1 or {image.shape[0]}, got shape {tuple(mask.shape)}")
    m = m.to(image.device)
    if tuple(m.shape[-2:]) != tuple(image.shape[-2:]):
        m = F.interpolate(m, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    return torch.where(m >= threshold, image, torch.full_like(image, white))


def prepare_reference(reference01: torch.Tensor) -> torch.Tensor:
    """Reference in [0, 1] → [-1, 1] at native resolution (the CLIP encoder squashes it to 224²)."""
    return to_signed(check_image(reference01, "reference"))


def blank_sketch(batch: int, size: tuple[int, int]) -> torch.Tensor:
    """The unconditional sketch: all -1 (no lines)."""
    return torch.full((batch, 3, *size), -1.0)
