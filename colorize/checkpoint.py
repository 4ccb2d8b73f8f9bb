"""Checkpoint files: safe loading, prefix split, version detection, config inference, key checks.

The released ColorizeDiffusion files (official-implementation.md §5) are one flat state dict per
version; the version and the prediction type are read from the *keys*, never from the file name
(the official app's ``"eps" in filename`` rule silently picks the wrong parameterisation for a
renamed file). Only safetensors and ``torch.load(weights_only=True)`` are ever used to read files.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from colorize.config import (
    ClipConfig,
    ColorizerConfig,
    Parameterization,
    SketchEncoderConfig,
    UNetConfig,
    VAEConfig,
    Version,
)
from colorize.schedule import BUFFER_NAMES

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
CONFIG_METADATA_KEY = "colorize_config"  # safetensors __metadata__ entry holding ColorizerConfig.to_dict() JSON

# Component name -> key prefix (official-implementation.md §5.2). Order matters only for
# readability; no prefix is a prefix of another one.
COMPONENT_PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "sketch_encoder": "control_encoder.",
    "vae": "first_stage_model.",
    "clip_visual": "cond_stage_model.visual.model.",
    "clip_text": "cond_stage_model.transformer.model.",
    "thresh_embedder": "thresh_embedder.",
    "transformer": "transformer.",
    "bg_encoder": "bg_encoder.",
    "style_encoder": "style_encoder.",
}
SCHEDULE_BUFFERS: tuple[str, ...] = BUFFER_NAMES
COMPONENTS: tuple[str, ...] = (*COMPONENT_PREFIXES, "schedule", "unexpected")
OPTIONAL_COMPONENTS: tuple[str, ...] = ("clip_visual", "clip_text", "schedule")
# CLIP comes from its own file and the schedule buffers are recomputed (§5.1): never required.
DEFAULT_OPTIONAL: tuple[str, ...] = (
    COMPONENT_PREFIXES["clip_visual"],
    COMPONENT_PREFIXES["clip_text"],
    *SCHEDULE_BUFFERS,
)
PARAMETERIZATION: dict[str, Parameterization] = {"mult": "eps", "switch": "eps", "v2": "v"}
VERSION_TITLES = {
    "mult": "ColorizeDiffusion v1 (mult)",
    "switch": "ColorizeDiffusion v1.5 (switch)",
    "v2": "ColorizeDiffusion v2",
}
_LAYOUT_DIR = Path(__file__).resolve().parent / "layouts"
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor (``dtype`` is e.g. ``"float16"``; None if unknown)."""

    shape: tuple[int, ...]
    dtype: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


ShapeLike = Any  # torch.Tensor | TensorInfo | Sequence[int]


def shape_of(v: ShapeLike) -> tuple[int, ...]:
    """The shape of a tensor, a :class:`TensorInfo` or a plain sequence of ints."""
    if isinstance(v, TensorInfo):
        return v.shape
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    return tuple(int(s) for s in v)


def dtype_of(v: ShapeLike) -> str | None:
    if isinstance(v, TensorInfo):
        return v.dtype
    if isinstance(v, torch.Tensor):
        return str(v.dtype).removeprefix("torch.")
    return None


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _missing_file_message(path: Path) -> str:
    from colorize.weights import default_models_dir  # lazy: weights imports nothing from here

    return (
        f"checkpoint file not found: {path}. ColorizeDiffusion checkpoints are expected in "
        f"{default_models_dir() / 'colorizediffusion'} (or ComfyUI's models/colorizediffusion folder, or any "
        "path you pass explicitly). Fetch one with `python -m colorize download mult-eps-ft` "
        "(see weights_manifest.json for all files) or download it from "
        "https://huggingface.co/tellurion/ColorizeDiffusion and pass its path."
    )


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(_missing_file_message(p))
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file; pass the path of the .safetensors file inside it.")
    if p.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise CheckpointError(
            f"{p.name}: unsupported file type {p.suffix or '(no extension)'!r}. Supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)} (safetensors preferred; .ckpt/.pt/.pth/.bin are read with "
            "torch.load(weights_only=True)). GGUF, ONNX and diffusers folders are not ColorizeDiffusion formats."
        )
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): the download or copy did not complete; re-download it.")
    return p


def _truncated(p: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{p}: file is truncated or not a safetensors file; re-download it "
        f"(an interrupted download leaves a file that is too short). Detail: {detail}."
    )


def _read_safetensors_header(p: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse the 8-byte length + JSON header; check that the data section is complete."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _truncated(p, f"only {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise _truncated(p, f"header length {n} does not fit in {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _truncated(p, f"header is not valid JSON: {e.msg if hasattr(e, 'msg') else e}") from None
    if not isinstance(header, dict):
        raise _truncated(p, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    end = 0
    try:
        for k, v in header.items():
            infos[k] = TensorInfo(tuple(int(s) for s in v["shape"]), _SAFETENSORS_DTYPES.get(v["dtype"], str(v["dtype"]).lower()))
            end = max(end, int(v["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError):
        raise _truncated(p, f"malformed header entry for {k!r}") from None
    if 8 + n + end > size:
        raise _truncated(p, f"{size:,} of {8 + n + end:,} bytes present")
    return infos, {str(k): str(v) for k, v in meta.items()}


def _torch_load(p: Path, mmap: bool = True) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a :class:`CheckpointError`."""
    try:
        try:
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if mmap and "mmap" in str(e).lower():  # legacy (non-zip) format cannot be memory-mapped
                return torch.load(str(p), map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{p.name}: refused to load. The file contains pickled Python objects besides tensors "
                "(for example a full training checkpoint or a pickled model), and loading those could run "
                "arbitrary code, so only weights_only loading is allowed. Use the .safetensors release, or "
                "re-save the state dict as safetensors in an environment you trust."
            ) from None
        raise CheckpointError(f"{p.name}: not a PyTorch checkpoint or the file is corrupt ({e}); re-download it.") from None
    except Exception as e:  # the weights-only unpickler raises many types on garbage input
        text = str(e).strip().splitlines()
        first = f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
        raise CheckpointError(
            f"{p.name}: cannot read this PyTorch file; it is truncated or corrupt ({first}). Re-download it."
        ) from None


def _tensors_only(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p.name}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors).")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{p.name}: contains no tensors (keys: {', '.join(map(str, list(obj)[:5]))}).")
    return sd


def _matches(key: str, prefixes: Sequence[str] | None) -> bool:
    return prefixes is None or key.startswith(tuple(prefixes))


def read_header(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Key -> (shape, dtype) without loading tensor data (safetensors: header bytes only)."""
    p = _check_path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors_header(p)[0]
    sd = _tensors_only(_torch_load(p, mmap=True), p)
    return {k: TensorInfo(tuple(v.shape), dtype_of(v)) for k, v in sd.items()}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors ``__metadata__`` block ({} for torch files or when absent)."""
    p = _check_path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors_header(p)[1]
    return {}


def load_state_dict_file(
    path: str | os.PathLike[str],
    prefixes: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors (only keys starting with one of ``prefixes`` when given).

    ``.safetensors`` is read lazily key by key, so a prefix subset of a 7 GB file costs only
    that subset's memory; ``.ckpt/.pt/.pth/.bin`` go through ``torch.load(weights_only=True,
    mmap=True)`` and ``["state_dict"]`` is unwrapped. Dtypes are kept as stored.
    """
    from safetensors import SafetensorError, safe_open

    p = _check_path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        _read_safetensors_header(p)  # clear errors for truncated/foreign files before safetensors does
        try:
            with safe_open(str(p), framework="pt", device=str(device)) as f:
                return {k: f.get_tensor(k) for k in f.keys() if _matches(k, prefixes)}
        except SafetensorError as e:
            raise CheckpointError(f"{p}: safetensors could not read the file ({e}); it is corrupt, re-download it.") from None
    sd = _tensors_only(_torch_load(p, mmap=True), p)
    return {k: v.to(device) for k, v in sd.items() if _matches(k, prefixes)}


# --------------------------------------------------------------------------------------------
# Keys: split, version, parameterisation
# --------------------------------------------------------------------------------------------


def component_of(key: str) -> str:
    """Which component a full state-dict key belongs to (``"unexpected"`` if none)."""
    for name, prefix in COMPONENT_PREFIXES.items():
        if key.startswith(prefix):
            return name
    return "schedule" if key in SCHEDULE_BUFFERS else "unexpected"


def split_by_prefix(sd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Split a state dict (or key->shape map) into components, prefixes stripped.

    Every name in :data:`COMPONENTS` is present (possibly empty). ``schedule`` and
    ``unexpected`` keep their full key names.
    """
    parts: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
    for k, v in sd.items():
        c = component_of(k)
        prefix = COMPONENT_PREFIXES.get(c, "")
        parts[c][k[len(prefix):]] = v
    return parts


def _describe_foreign(keys: list[str]) -> str:
    """A short guess of what a non-ColorizeDiffusion state dict is."""
    ks = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in ks)

    if not keys:
        return "the file contains no tensors"
    if has("conditioner.embedders."):
        return "looks like an SDXL checkpoint (conditioner.embedders.*); ColorizeDiffusion-XL is not supported here"
    if has("model.diffusion_model.") and has("control_encoder."):
        return "has a U-Net and sketch encoder but none of the version markers"
    if has("model.diffusion_model."):
        return "looks like a plain Stable Diffusion checkpoint (model.diffusion_model.* but no control_encoder.*)"
    if has("control_encoder.") or has("bg_encoder.") or has("thresh_embedder."):
        return "contains ColorizeDiffusion parts but no U-Net (model.diffusion_model.*): an incomplete file"
    if has("control_model.") or has("controlnet_"):
        return "looks like a ControlNet"
    if has("down_blocks.") or has("mid_block."):
        return "looks like a diffusers-format model (down_blocks.*/mid_block.*), not an LDM-format checkpoint"
    if has("visual.") or has("vision_model.") or has("text_model.") or "token_embedding.weight" in ks:
        return "looks like a CLIP model; pass it as the reference encoder (CLIP) file, not as the checkpoint"
    if has("encoder.down.") and has("decoder.up."):
        return "looks like a standalone VAE"
    if has("lora_unet_") or any(".lora_down." in k or "lora_A" in k for k in ks):
        return "looks like a LoRA file"
    return "no known ColorizeDiffusion key prefix; first keys: " + ", ".join(sorted(ks)[:4])


def detect_version(keys_or_shapes: Iterable[str] | Mapping[str, Any], source: str | None = None) -> Version:
    """``"mult"``, ``"switch"`` or ``"v2"`` from the key names alone (official-implementation.md §5.2).

    With U-Net keys present: ``bg_encoder.*``/``style_encoder.*``/``warp_modules`` => v2;
    ``thresh_embedder.*``, ``transformer.{embedding,layers}`` or ``lora_down_bg`` => switch;
    ``control_encoder.*`` => mult. Anything else raises :class:`CheckpointError` describing what
    the file looks like (an open_clip file's ``transformer.resblocks.*`` is not a switch marker).
    """
    keys = list(keys_or_shapes.keys() if isinstance(keys_or_shapes, Mapping) else keys_or_shapes)
    unet = any(k.startswith("model.diffusion_model.") for k in keys)
    if unet and any(
        k.startswith(("bg_encoder.", "style_encoder.")) or ".warp_modules." in k or ".style_modules." in k for k in keys
    ):
        return "v2"
    switch_prefixes = ("thresh_embedder.", "transformer.embedding", "transformer.layers.")
    if unet and any(k.startswith(switch_prefixes) or ".lora_down_bg." in k for k in keys):
        return "switch"
    if unet and any(k.startswith("control_encoder.") for k in keys):
        return "mult"
    what = f"{source} is" if source else "this file is"
    raise CheckpointError(
        f"{what} not a ColorizeDiffusion checkpoint: {_describe_foreign(keys)}. A ColorizeDiffusion "
        "checkpoint has U-Net (model.diffusion_model.*) and sketch-encoder (control_encoder.*) keys; v1.5 adds "
        "thresh_embedder.*/transformer.*, v2 adds bg_encoder.*/style_encoder.*. The released files are "
        "listed in weights_manifest.json (`python -m colorize download --list`)."
    )


def parameterization_for(version: str) -> Parameterization:
    """Prediction target by version: v2 -> ``"v"``, mult/switch -> ``"eps"`` (§1.1)."""
    return PARAMETERIZATION[version]


# --------------------------------------------------------------------------------------------
# Config inference from shapes
# --------------------------------------------------------------------------------------------


def _need(shapes: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"cannot infer the {what} configuration: key {key!r} is missing.")
    return shape_of(shapes[key])


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def default_num_head_channels(model_channels: int) -> int:
    """Head width when no metadata says: 64 (SD2.1) if it divides the width, else the largest of
    32/16/8 giving at least two heads at the first level (matches the tiny presets)."""
    if model_channels % 64 == 0:
        return 64
    for c in (32, 16, 8):
        if model_channels % c == 0 and model_channels // c >= 2:
            return c
    return model_channels


def infer_unet_config(unet: Mapping[str, Any], num_head_channels: int | None = None) -> UNetConfig:
    """UNetConfig from U-Net shapes (keys without the ``model.diffusion_model.`` prefix)."""
    w0 = _need(unet, "input_blocks.0.0.weight", "U-Net")
    mc, in_ch = w0[0], w0[1]
    out_ch = _need(unet, "out.2.weight", "U-Net")[0]
    blocks = _indices(unet, r"input_blocks\.(\d+)\.")
    downs = _indices(unet, r"input_blocks\.(\d+)\.0\.op\.weight$")
    levels = len(downs) + 1
    n_res, rem = divmod(len(blocks) - 1 - len(downs), levels)
    if rem or n_res < 1:
        raise CheckpointError(f"cannot infer the U-Net configuration: {len(blocks)} input blocks do not form {levels} levels.")
    mult, attn, attn_blocks = [], [], []
    for level in range(levels):
        first = 1 + level * (n_res + 1)
        ch = _need(unet, f"input_blocks.{first}.0.out_layers.3.weight", "U-Net")[0]
        if ch % mc:
            raise CheckpointError(f"cannot infer the U-Net configuration: level {level} width {ch} is not a multiple of {mc}.")
        mult.append(ch // mc)
        if any(k.startswith(f"input_blocks.{first}.1.") for k in unet):
            attn.append(2**level)
            attn_blocks.append(f"input_blocks.{first}.1.")
    k_keys = sorted(k for k in unet if k.endswith("attn2.to_k.weight"))
    if not k_keys:
        raise CheckpointError("cannot infer the U-Net configuration: no cross-attention (attn2.to_k) weights found.")
    context_dim = shape_of(unet[k_keys[0]])[1]
    depth_src = attn_blocks[0] if attn_blocks else "middle_block.1."
    depth = len(_indices(unet, re.escape(depth_src) + r"transformer_blocks\.(\d+)\.")) or 1
    return UNetConfig(
        in_channels=in_ch,
        out_channels=out_ch,
        model_channels=mc,
        channel_mult=tuple(mult),
        num_res_blocks=n_res,
        attention_resolutions=tuple(sorted(attn, reverse=True)),
        num_head_channels=num_head_channels or default_num_head_channels(mc),
        transformer_depth=depth,
        context_dim=context_dim,
    )


def infer_sketch_config(sketch: Mapping[str, Any]) -> SketchEncoderConfig:
    """SketchEncoderConfig from ``control_encoder.*`` shapes (prefix stripped)."""
    in_ch = _need(sketch, "model.0.weight", "sketch encoder")[1]
    mc = _need(sketch, "zero_layer.0.weight", "sketch encoder")[0]
    outs = _indices(sketch, r"output_blocks\.(\d+)\.1\.weight$")
    return SketchEncoderConfig(
        in_ch=in_ch,
        model_channels=mc,
        ch_mults=tuple(shape_of(sketch[f"output_blocks.{i}.1.weight"])[0] // mc for i in outs),
    )


def infer_vae_config(vae: Mapping[str, Any]) -> VAEConfig:
    """VAEConfig from ``first_stage_model.*`` shapes (prefix stripped)."""
    conv_in = _need(vae, "encoder.conv_in.weight", "VAE")
    ch = conv_in[0]
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(_need(vae, f"encoder.down.{i}.block.0.conv2.weight", "VAE")[0] // ch for i in levels)
    return VAEConfig(
        embed_dim=_need(vae, "quant_conv.weight", "VAE")[0] // 2,
        z_channels=_need(vae, "decoder.conv_in.weight", "VAE")[1],
        in_channels=conv_in[1],
        out_ch=_need(vae, "decoder.conv_out.weight", "VAE")[0],
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")),
    )


def _config_from_metadata(text: str) -> ColorizerConfig:
    try:
        return ColorizerConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"the {CONFIG_METADATA_KEY!r} metadata entry is not a valid config ({e}).") from None


def infer_config(
    shapes: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    num_head_channels: int | None = None,
) -> ColorizerConfig:
    """A :class:`ColorizerConfig` for a checkpoint, from its key shapes.

    The ``colorize_config`` metadata entry (written by the tiny-weights writer) is preferred
    when present; it is checked against the U-Net shapes. Otherwise every size is derived from
    shapes; ``num_head_channels`` is not visible in shapes, so it comes from the argument or
    :func:`default_num_head_channels`. Components missing from the file keep their defaults;
    the CLIP config is always the default (CLIP comes from a separate file).
    """
    version = detect_version(shapes)
    parts = split_by_prefix(shapes)
    if metadata and CONFIG_METADATA_KEY in metadata:
        cfg = _config_from_metadata(metadata[CONFIG_METADATA_KEY])
        w0 = parts["unet"].get("input_blocks.0.0.weight")
        if w0 is not None and shape_of(w0)[0] != cfg.unet.model_channels:
            raise CheckpointError(
                f"the {CONFIG_METADATA_KEY!r} metadata says model_channels={cfg.unet.model_channels} but the "
                f"U-Net weights have {shape_of(w0)[0]}; the file was modified after it was written."
            )
        return replace(cfg, version=version, parameterization=parameterization_for(version))
    return ColorizerConfig(
        version=version,
        parameterization=parameterization_for(version),
        unet=infer_unet_config(parts["unet"], num_head_channels),
        sketch=infer_sketch_config(parts["sketch_encoder"]) if parts["sketch_encoder"] else SketchEncoderConfig(),
        vae=infer_vae_config(parts["vae"]) if parts["vae"] else VAEConfig(),
        clip=ClipConfig(),
    )


# --------------------------------------------------------------------------------------------
# Expected layouts and key validation
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _layout(version: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    for name in (f"keys_{version}.json.gz", f"keys_{version}.json"):
        p = _LAYOUT_DIR / name
        if p.is_file():
            raw = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
            return tuple((k, tuple(v)) for k, v in json.loads(raw).items())
    raise FileNotFoundError(f"layout for {version!r} not found in {_LAYOUT_DIR}")


def expected_layout(version: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released full-size model of ``version`` (incl. CLIP and buffers)."""
    if version not in PARAMETERIZATION:
        raise ValueError(f"unknown version {version!r}; expected one of {', '.join(PARAMETERIZATION)}")
    return dict(_layout(version))


def _is_optional(key: str, optional: Iterable[str]) -> bool:
    return any(key == o or (o.endswith(".") and key.startswith(o)) for o in optional)


@dataclass
class KeyMatch:
    """Result of comparing an expected key->shape map with what a file holds."""

    present: list[str]
    missing: list[str]
    optional_missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def compare_keys(
    expected: Mapping[str, Any],
    got: Mapping[str, Any],
    optional: Iterable[str] = DEFAULT_OPTIONAL,
    check_shapes: bool = True,
) -> KeyMatch:
    """Present / missing / unexpected keys and shape mismatches (dtype is not compared)."""
    optional = tuple(optional)
    present, missing, opt_missing, mismatched = [], [], [], []
    for k, shp in expected.items():
        if k in got:
            present.append(k)
            if check_shapes and shape_of(got[k]) != shape_of(shp):
                mismatched.append((k, shape_of(shp), shape_of(got[k])))
        elif _is_optional(k, optional):
            opt_missing.append(k)
        else:
            missing.append(k)
    unexpected = [k for k in got if k not in expected]
    return KeyMatch(present, missing, opt_missing, unexpected, mismatched)


def _listing(title: str, items: list[str], limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more


def validate_keys(
    expected: Mapping[str, Any],
    got: Mapping[str, Any],
    optional: Iterable[str] = DEFAULT_OPTIONAL,
    what: str = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and wrongly shaped keys.

    ``optional`` holds exact names or prefixes ending in ``"."``; by default the CLIP towers
    and the 12 schedule buffers. fp16 and fp32 tensors are equally accepted.
    """
    m = compare_keys(expected, got, optional)
    if m.ok:
        return
    msg = (
        f"{what} does not match the expected key layout: {len(m.missing)} missing, "
        f"{len(m.unexpected)} unexpected, {len(m.mismatched)} with the wrong shape."
    )
    if m.missing:
        msg += _listing("missing", m.missing)
    if m.unexpected:
        msg += _listing("unexpected", m.unexpected)
    if m.mismatched:
        msg += _listing("wrong shape", [f"{k} expected {list(e)} got {list(g)}" for k, e, g in m.mismatched])
    raise CheckpointError(msg)


# --------------------------------------------------------------------------------------------
# One-call summary for loaders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is, read from its header only."""

    path: Path
    version: Version
    parameterization: Parameterization
    config: ColorizerConfig
    header: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_checkpoint_info(path: str | os.PathLike[str], num_head_channels: int | None = None) -> CheckpointInfo:
    """Version, parameterisation and config of a checkpoint without loading its tensors."""
    header = read_header(path)
    metadata = read_metadata(path)
    version = detect_version(header, source=Path(path).name)
    config = infer_config(header, metadata, num_head_channels)
    return CheckpointInfo(Path(path), version, parameterization_for(version), config, header, metadata)


__all__ = [
    "COMPONENTS",
    "COMPONENT_PREFIXES",
    "CONFIG_METADATA_KEY",
    "CheckpointError",
    "CheckpointInfo",
    "DEFAULT_OPTIONAL",
    "KeyMatch",
    "OPTIONAL_COMPONENTS",
    "SCHEDULE_BUFFERS",
    "SUPPORTED_SUFFIXES",
    "TensorInfo",
    "compare_keys",
    "component_of",
    "default_num_head_channels",
    "detect_version",
    "expected_layout",
    "infer_config",
    "infer_sketch_config",
    "infer_unet_config",
    "infer_vae_config",
    "load_state_dict_file",
    "parameterization_for",
    "read_checkpoint_info",
    "read_header",
    "read_metadata",
    "shape_of",
    "split_by_prefix",
    "validate_keys",
]
