"""Loading line-extractor weights: manifest lookup, safe file reading, kind detection, strict meta fill.

Files are read only with :func:`colorize.checkpoint.load_state_dict_file` (safetensors, or
``torch.load(weights_only=True)`` for the published ``.pth`` state dicts). The network is built on
the meta device and every tensor is assigned from the file: a missing, extra or wrongly shaped key
is an error that names it (``num_batches_tracked`` counters, absent from some old files, default to 0).
A ``module.`` prefix (weights saved from ``DataParallel``) is removed first.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from colorize.checkpoint import load_state_dict_file, materialize
from colorize.errors import LineExtractorWeightsError
from colorize.extractors.extractor import LineExtractor
from colorize.extractors.registry import MODEL_SPECS, ModelSpec, canonical_method

PathLike = str | os.PathLike[str]
# Key prefixes of files people may pick by mistake, and what they are.
FOREIGN_HINTS: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "a ColorizeDiffusion / Stable Diffusion checkpoint"),
    ("control_encoder.", "a ColorizeDiffusion checkpoint"),
    ("model0.", "ControlNet's realistic lineart model (sk_model.pth / informative-drawings), which is not supported"),
    ("image_encoder.", "a Segment Anything (SAM) checkpoint"),
    ("visual.", "a CLIP model"),
)




def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix ``DataParallel`` adds (only when every key has it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def detect_kind(state_dict: Mapping[str, object], source: str = "state dict") -> str:
    """Which extractor the weights belong to (by marker keys); a clear error for anything else."""
    found = [k for k, s in MODEL_SPECS.items() if s.marker in state_dict]
    if len(found) == 1:
        return found[0]
    hint = next((what for prefix, what in FOREIGN_HINTS if any(k.startswith(prefix) for k in state_dict)), None)
    sample = ", ".join(list(state_dict)[:4]) or "none"
    raise LineExtractorWeightsError(
        f"{source} is not line-extractor weights" + (f": it looks like {hint}" if hint else "")
        + f" (first keys: {sample}). Supported: "
        + "; ".join(f"{s.title} ({s.manifest_name}, key {s.marker!r})" for s in MODEL_SPECS.values())
        + ". Use the published files listed in weights_manifest.json (kind 'line_extractor')."
    )


def build_network(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Build ``spec``'s network on the meta device and assign every tensor from ``state_dict`` strictly
    (:func:`colorize.checkpoint.materialize`); BatchNorm counters a file lacks default to 0."""
    full = dict(state_dict)
    for k in state_dict:
        if k.endswith("running_mean"):
            full.setdefault(k[: -len("running_mean")] + "num_batches_tracked", torch.zeros((), dtype=torch.long))
    return materialize(spec.build, full, f"{source} ({spec.title} weights)").eval().requires_grad_(False)


def line_extractor_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    kind: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "state dict",
) -> LineExtractor:
    """A ready :class:`LineExtractor` from weights; ``kind`` ("auto" or a model name) is checked against them."""
    sd = strip_module_prefix(state_dict)
    found = detect_kind(sd, source)
    if kind != "auto":
        wanted = canonical_method(kind)
        if wanted != found:
            raise LineExtractorWeightsError(
                f"{source} holds {MODEL_SPECS[found].title} weights, but {kind!r} was requested; "
                f"pick {found!r} or the {MODEL_SPECS.get(wanted, MODEL_SPECS[found]).title} file."
            )
    net = build_network(MODEL_SPECS[found], sd, source)
    return LineExtractor(found, net.to(device=device, dtype=dtype), source)


def resolve_line_extractor_path(
    name_or_path: PathLike, models_dir: PathLike | None = None, download: bool = False
) -> Path:
    """A local file for a path, a manifest name (``lineart-sketchkeras``) or a model name (``sketch_keras``,
    or the official ``lineart_keras``); missing files raise ``WeightsMissingError`` with download steps."""
    from colorize.weights import resolve

    key = os.fspath(name_or_path)
    try:
        method = canonical_method(key)
    except ValueError:
        method = None
    if method in MODEL_SPECS:
        key = MODEL_SPECS[method].manifest_name
    elif method is not None:
        raise ValueError(f"{key!r} needs no weights file; call extract_lines(image, {method!r}) instead")
    return Path(resolve(key, models_dir=models_dir, download=download))


def load_line_extractor(
    name_or_path: PathLike = "sketch_keras",
    kind: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    models_dir: PathLike | None = None,
    download: bool = False,
) -> LineExtractor:
    """Load SketchKeras / Anime2Sketch / MangaLineExtraction from a file, manifest name or model name.

    The network is recognised from the weights' keys (``kind`` only checks it). Foreign or damaged
    files raise :class:`LineExtractorWeightsError` / :class:`colorize.errors.CheckpointError`.
    """
    path = resolve_line_extractor_path(name_or_path, models_dir, download)
    state_dict = load_state_dict_file(path)
    return line_extractor_from_state_dict(state_dict, kind, device, dtype, source=path.name)


__all__ = [
    "FOREIGN_HINTS", "detect_kind", "line_extractor_from_state_dict",
    "build_network", "load_line_extractor", "resolve_line_extractor_path", "strip_module_prefix",
]
