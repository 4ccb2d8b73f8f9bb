"""Reading checkpoint files safely: safetensors first, ``torch.load(weights_only=True)`` otherwise."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from colorize.checkpoint.common import TensorInfo, dtype_of
from colorize.errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _missing_file_message(path: Path) -> str:
    from colorize.weights import default_models_dir

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
    except RecursionError:  # a safetensors header is two levels deep; a crafted one may nest thousands
        raise _truncated(p, "header is nested too deeply") from None
    if not isinstance(header, dict):
        raise _truncated(p, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _truncated(p, "__metadata__ must map names to strings")
    infos: dict[str, TensorInfo] = {}
    end = 0
    try:
        for k, v in header.items():
            shape = tuple(int(s) for s in v["shape"])
            begin, stop = (int(o) for o in v["data_offsets"])
            if min(shape, default=0) < 0 or not 0 <= begin <= stop:
                raise ValueError("negative size or offset")
            infos[k] = TensorInfo(shape, _SAFETENSORS_DTYPES.get(v["dtype"], str(v["dtype"]).lower()))
            end = max(end, stop)
    except (KeyError, TypeError, ValueError, IndexError):
        raise _truncated(p, f"malformed header entry for {k!r}") from None
    if 8 + n + end > size:
        raise _truncated(p, f"{size:,} of {8 + n + end:,} bytes present")
    return infos, {str(k): str(v) for k, v in meta.items()}


#: How PyTorch files begin: a zip archive (torch.save since 1.6) or a pickle stream (protocol 2+ opcode).
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")


def _torch_load(p: Path, mmap: bool = True) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a :class:`CheckpointError`; a file that is
    neither a zip archive nor a pickle stream is named as such before the unpickler sees it (its errors would
    otherwise read as "pickled objects")."""
    with open(p, "rb") as f:
        head = f.read(4)
    if not head.startswith(TORCH_FILE_MAGIC):
        raise CheckpointError(f"{p.name}: not a PyTorch checkpoint (it is neither a zip archive nor a pickle stream; "
                              f"first bytes {head.hex()}): the file is corrupt or of another format. Re-download it.")
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
