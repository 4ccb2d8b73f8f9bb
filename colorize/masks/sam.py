"""Reference foreground mask with segment-anything (SAM v1: ViT-B / ViT-L / ViT-H).

The released v1.5 app masks the reference with RMBG-2.0 or ISNet (official ``backend/appfunc.py:250-266``,
``preprocessor/__init__.py:34-47``); SAM is this project's prompted alternative. Models are built with
``segment_anything.build_sam_vit_*(checkpoint=None)`` (nothing is downloaded; construction
happens on the meta device, so no time is spent on a random init) and filled from a local
file read by :func:`colorize.checkpoint.load_state_dict_file` (safetensors, or
``torch.load(weights_only=True)`` for the official ``.pth`` pickles, which are plain state
dicts of float tensors). Files come through ``weights_manifest.json`` (``models/sams``).

Prompts are in pixel coordinates of the input image (x right, y down, pixel centres at
integers, as in ``SamPredictor``) or, with ``normalized=True``, fractions of (W-1, H-1).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from colorize.checkpoint import compare_keys, load_state_dict_file
from colorize.errors import SamWeightsError
from colorize.masks.morphology import dilate

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

AutoPrompt = Literal["point", "box", "point+box"]
# variant -> (manifest name, encoder embed dim)
SAM_VARIANTS: dict[str, tuple[str, int]] = {
    "vit_b": ("sam-vit-b", 768),
    "vit_l": ("sam-vit-l", 1024),
    "vit_h": ("sam-vit-h", 1280),
    "tiny": ("", 32),  # random test model, see build_tiny_sam
}
DEFAULT_SAM = "sam-vit-b"  # manifest name of the default (smallest) checkpoint
_REQUIRED_KEYS = (
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.pos_embed",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "mask_decoder.iou_token.weight",
)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)




# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------


def build_tiny_sam(img_size: int = 64) -> Sam:
    """A randomly initialised SAM small enough for CPU tests (ViT embed 32, depth 2, 64 px)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    dim, patch = 32, 16
    grid = img_size // patch
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=2.0,
            out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=2, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return model.eval()


def _builder(variant: str, img_size: int) -> Callable[[], Sam]:
    if variant == "tiny":
        return partial(build_tiny_sam, img_size)
    import segment_anything

    return {
        "vit_b": segment_anything.build_sam_vit_b,
        "vit_l": segment_anything.build_sam_vit_l,
        "vit_h": segment_anything.build_sam_vit_h,
    }[variant]


def place_sam(model: Sam, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Sam:
    """Move SAM to ``device``; the image encoder (nearly all the weights and compute) takes
    ``dtype``, the small prompt encoder and mask decoder stay float32 (segment_anything casts
    prompt coordinates to float32, so they cannot run in half precision)."""
    model = model.to(device=device)
    model.image_encoder.to(dtype=dtype)
    model.prompt_encoder.float()
    model.mask_decoder.float()
    return model.eval()


def build_sam(variant: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Sam:
    """A randomly initialised SAM of ``variant`` ("vit_b", "vit_l", "vit_h" or "tiny")."""
    _check_variant(variant)
    return place_sam(_builder(variant, 64)(), device, dtype)


def _check_variant(variant: str) -> None:
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; use one of {', '.join(SAM_VARIANTS)}")


def infer_sam_variant(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> str:
    """The variant of a SAM v1 state dict, from the ViT width; :class:`SamWeightsError` otherwise."""
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        sample = ", ".join(list(state_dict)[:4])
        raise SamWeightsError(
            f"{source} is not a segment-anything (SAM v1) checkpoint: it lacks {', '.join(missing)} "
            f"(its first keys: {sample or 'none'}). Use the official sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth "
            "or sam_vit_h_4b8939.pth (or a safetensors copy of one); SAM 2, HQ-SAM, MobileSAM and "
            "Hugging Face transformers SAM files use other layouts and are not supported."
        )
    width = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[0])
    for name, (_, dim) in SAM_VARIANTS.items():
        if dim == width:
            return name
    raise SamWeightsError(
        f"{source}: SAM image encoder width {width} matches none of "
        f"{', '.join(f'{k} ({d})' for k, (_, d) in SAM_VARIANTS.items())}."
    )


def resolve_sam_path(
    name_or_path: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> str:
    """A local file for a path, a manifest name (``sam-vit-b``) or a variant (``vit_b``)."""
    from colorize.weights import resolve

    key = os.fspath(name_or_path)
    if key in SAM_VARIANTS and SAM_VARIANTS[key][0]:
        key = SAM_VARIANTS[key][0]
    return os.fspath(resolve(key, models_dir=models_dir, download=download))


def sam_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    variant: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "state dict",
) -> Sam:
    """Build the matching SAM (on the meta device) and fill it strictly from ``state_dict``."""
    found = infer_sam_variant(state_dict, source)
    if variant != "auto":
        _check_variant(variant)
        if variant != found:
            raise SamWeightsError(f"{source} holds a SAM {found} model, but variant={variant!r} was requested.")
    grid = int(state_dict["image_encoder.pos_embed"].shape[1])
    patch = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[-1])
    with torch.device("meta"):
        model = _builder(found, grid * patch)()
    match = compare_keys({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict, optional=())
    missing, unexpected = match.missing, match.unexpected
    wrong = [f"{k} {got} != {want}" for k, want, got in match.mismatched]
    if not match.ok:
        parts = [f"{label} ({len(items)}): {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise SamWeightsError(
            f"{source} does not fit SAM {found}: {'; '.join(parts)}. It is not an unmodified official SAM v1 "
            "checkpoint (HQ-SAM and fine-tunes with extra heads are not supported)."
        )
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    # Non-persistent buffers are not in the file; recreate them in case they were built on meta.
    model.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
    model.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
    return place_sam(model, device, dtype)


def load_sam(
    name_or_path: str | os.PathLike[str],
    variant: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    models_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Sam:
    """Load SAM from a ``.pth``/``.safetensors`` file, a manifest name or a variant name.

    The variant is read from the weights (``variant`` only checks it). Missing files raise
    :class:`colorize.errors.WeightsMissingError` with download instructions; unreadable or
    foreign files raise :class:`SamWeightsError` / :class:`CheckpointError`.
    """
    path = resolve_sam_path(name_or_path, models_dir, download)
    state_dict = load_state_dict_file(path)
    return sam_from_state_dict(state_dict, variant, device, dtype, source=os.path.basename(path))


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def centre_prompt(
    height: int, width: int, mode: AutoPrompt = "point+box", box_margin: float = 0.05
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The automatic prompt: a positive point at the image centre and/or a centred box inset
    by ``box_margin`` of the size on every side. Returns ``(points (1, 2), labels (1,), box (4,))``."""
    if mode not in ("point", "box", "point+box"):
        raise ValueError(f"auto_prompt must be 'point', 'box' or 'point+box'; got {mode!r}")
    if not 0.0 <= box_margin < 0.5:
        raise ValueError(f"box_margin must be in [0, 0.5); got {box_margin}")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    points = torch.tensor([[cx, cy]]) if "point" in mode else None
    labels = torch.ones(1) if points is not None else None
    mx, my = box_margin * (width - 1), box_margin * (height - 1)
    box = torch.tensor([mx, my, width - 1 - mx, height - 1 - my]) if "box" in mode else None
    return points, labels, box


def _per_image(value: Any, batch: int, item_shape: tuple[int, ...], name: str) -> torch.Tensor | None:
    """A prompt given once for the batch or once per image → float tensor ``(B, *item_shape)``."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    n_dims = len(item_shape)
    if t.ndim == n_dims:
        t = t.unsqueeze(0).expand(batch, *t.shape)
    fits = t.ndim == n_dims + 1 and t.shape[0] == batch and all(s in (-1, d) for s, d in zip(item_shape, t.shape[1:]))
    if not fits:
        raise ValueError(f"{name} must have shape {item_shape} or (B={batch}, *{item_shape}); got {tuple(t.shape)}")
    return t


def _prompts(
    batch: int, height: int, width: int, points: Any, point_labels: Any, box: Any,
    normalized: bool, auto_prompt: AutoPrompt, box_margin: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    if points is not None and torch.as_tensor(points).numel() == 0:  # an empty list means "no points"
        points, point_labels = None, None
    if box is not None and torch.as_tensor(box).numel() == 0:
        box = None
    if points is None and box is None:
        points, point_labels, box = centre_prompt(height, width, auto_prompt, box_margin)
        normalized = False
    pts = _per_image(points, batch, (-1, 2), "points")
    if pts is not None:
        labels = _per_image(point_labels, batch, (-1,), "point_labels") if point_labels is not None else torch.ones(pts.shape[:2])
        if labels.shape != pts.shape[:2]:
            raise ValueError(f"point_labels {tuple(labels.shape)} do not match points {tuple(pts.shape)}")
    elif point_labels is not None:
        raise ValueError("point_labels given without points")
    else:
        labels = None
    bxs = _per_image(box, batch, (4,), "box")
    if normalized:
        scale = torch.tensor([width - 1, height - 1], dtype=torch.float32)
        pts = pts * scale if pts is not None else None
        bxs = bxs * scale.repeat(2) if bxs is not None else None
    return pts, labels, bxs


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def sam_input(image: torch.Tensor, img_size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] → resized so the long side is ``img_size``, in [0, 255]
    (the float twin of ``ResizeLongestSide.apply_image``; padding happens in ``Sam.preprocess``)."""
    h, w = image.shape[-2:]
    scale = img_size / max(h, w)
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    x = image.float().clamp(0.0, 1.0) * 255.0
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def _rgb(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be (B, 3, H, W) or (B, 1, H, W) in [0, 1]; got shape {tuple(image.shape)}")
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


@torch.inference_mode()
def sam_logits(
    sam: Sam,
    image: torch.Tensor,
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    box: torch.Tensor | None,
    multimask: bool | None = None,
) -> torch.Tensor:
    """Mask logits ``(B, H, W)`` (float32) for prompts already in input-pixel coordinates.

    ``points (B, N, 2)``, ``labels (B, N)`` (1 foreground, 0 background, -1 ignored),
    ``box (B, 4)`` xyxy. ``multimask=None`` asks SAM for three candidates only for a single
    point without a box (its ambiguous case) and keeps the one with the best predicted IoU.
    """
    image = _rgb(image)
    device, dtype = sam.pixel_mean.device, next(sam.image_encoder.parameters()).dtype
    size = sam.image_encoder.img_size
    height, width = image.shape[-2:]
    out = []
    for i in range(image.shape[0]):
        x = sam_input(image[i : i + 1].to(device), size)
        rh, rw = x.shape[-2:]
        scale = torch.tensor([rw / width, rh / height], device=device)
        x = sam.preprocess(x)  # normalise (float32 buffers) and pad to img_size x img_size
        embedding = sam.image_encoder(x.to(dtype)).float()
        pt = None
        if points is not None and labels is not None:
            pt = (points[i : i + 1].to(device) * scale, labels[i : i + 1].to(device).int())
        bx = box[i : i + 1].to(device) * scale.repeat(2) if box is not None else None
        multi = (points is not None and points.shape[1] == 1 and box is None) if multimask is None else multimask
        sparse, dense = sam.prompt_encoder(points=pt, boxes=bx, masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multi,
        )
        best = int(iou[0].float().argmax())
        logits = sam.postprocess_masks(low_res[:, best : best + 1], (rh, rw), (height, width))
        out.append(logits[0, 0])
    return torch.stack(out)


def sam_foreground_mask(
    sam: Sam,
    image: torch.Tensor,
    *,
    points: Any = None,
    point_labels: Any = None,
    box: Any = None,
    normalized: bool = False,
    auto_prompt: AutoPrompt = "point+box",
    box_margin: float = 0.05,
    threshold: float | None = 0.5,
    dilation: int = 0,
    multimask: bool | None = None,
) -> torch.Tensor:
    """Foreground mask of ``image`` ``(B, 3|1, H, W)`` in [0, 1] → ``(B, H, W)`` float on its device.

    Args:
        points: ``(N, 2)`` or ``(B, N, 2)`` xy points; ``point_labels`` ``(N,)``/``(B, N)``
            (1 = foreground, 0 = background; default all 1).
        box: ``(4,)`` or ``(B, 4)`` xyxy box.
        normalized: points/box are fractions of the image size instead of pixels.
        auto_prompt / box_margin: used when neither points nor box is given: a centre point,
            a centred box inset by ``box_margin``, or both (default).
        threshold: on SAM's probability (0.5 = SAM's own logit-0 cut); ``None`` returns the
            soft probabilities.
        dilation: grow the mask by this many pixels (square of ``2 * dilation + 1``).
        multimask: see :func:`sam_logits`.
    """
    b, _, h, w = _rgb(image).shape
    pts, labels, bxs = _prompts(b, h, w, points, point_labels, box, normalized, auto_prompt, box_margin)
    probs = torch.sigmoid(sam_logits(sam, image, pts, labels, bxs, multimask))
    mask = probs if threshold is None else (probs > threshold).float()
    if dilation > 0:
        mask = dilate(mask, 2 * dilation + 1)
    return mask.to(image.device)
