"""Tiny random weights in the released file formats, for tests, demos and ComfyUI host runs.

``python -m colorize make-tiny-weights DIR`` writes, in ComfyUI's models layout::

    DIR/colorizediffusion/mult-eps-ft.safetensors      (v1 "mult" layout, VAE in fp16 as released)
    DIR/colorizediffusion/switch-eps.safetensors       (v1.5 layout: split LoRA, thresh_embedder, transformer)
    DIR/colorizediffusion/v2-full.safetensors          (v2 layout: bg/style encoders, warp/style modules; v)
    DIR/colorizediffusion/sdxl.safetensors, xlv2.safetensors   (XL layouts: SDXL U-Net, ClusterConcat; xlv2 +
                                                       ReferenceNet, background LoRA; v)
    DIR/clip_vision/<reference encoder file name>      (open_clip format, vision + text)
    DIR/clip_vision/clip_vision_g.safetensors, DIR/wd_tagger/wd-v1-4-swinv2-tagger-v2.safetensors
                                                       (XL's CLIP-bigG tower in HF layout and WD tagger, timm layout)
    DIR/isnet/isnetis.safetensors, sketch-segment.safetensors   (tiny ISNetDIS mask networks)

under exactly the file names the CLI defaults, the weights manifest and the shipped workflows use, so every
command and workflow runs unchanged with ``--models-dir DIR``. The config is stored in the safetensors
metadata (``colorize_config``, incl. the head widths shapes cannot show, ``extras``) so the loader
rebuilds the same tiny shapes. The outputs are random: useful to exercise the code, not to colorize.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from colorize.atomic import safetensors_metadata, save_safetensors_atomic
from colorize.checkpoint import CONFIG_METADATA_KEY
from colorize.config import TINY_MULT, ColorizerConfig
from colorize.families import FAMILIES, component_prefixes, get_family
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.vae import AutoencoderKL
from colorize.weights import default_clip_name, load_manifest, manifest_entry

TINY_METADATA_KEY = "colorize_tiny"
#: the ISNet mask networks written beside the checkpoints (manifest names)
ISNET_NAMES: tuple[str, ...] = ("isnet-anime", "isnet-sketch")
#: the diffusion families, in the order their tiny checkpoints are written (a standalone family such as the
#: chapter-4 GAN writes its own file: ``write_tiny_weights(versions=("gan",))``)
VERSIONS: tuple[str, ...] = tuple(name for name, family in FAMILIES.items() if not family.standalone)


def checkpoint_name(version: str) -> str:
    """The manifest name of a family's default released checkpoint (``mult-eps-ft``, ``switch-eps``, ``v2-full``):
    the tiny file gets its file name."""
    for entry in load_manifest():
        if entry.get("kind") == "checkpoint" and entry.get("version") == version:
            return str(entry["name"])
    raise ValueError(f"weights_manifest.json lists no checkpoint of the {version!r} family")




def __getattr__(name: str) -> dict[str, str]:
    """``CHECKPOINT_NAMES``: the manifest name of each family's tiny checkpoint (the released file names), read
    from the manifest on first use rather than at import."""
    if name == "CHECKPOINT_NAMES":
        return {v: checkpoint_name(v) for v in VERSIONS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _metadata_or_empty(path: Path) -> dict[str, str]:
    try:
        return safetensors_metadata(path)
    except Exception:  # not a safetensors file: treat as a user file
        return {}


def _randomize_zero_layers(module: nn.Module, generator: torch.Generator) -> None:
    """Layers the real model zero-initialises get small random values, so every path contributes."""
    for p in module.parameters():
        if p.ndim >= 2 and not p.detach().any():
            fan_in = p[0].numel()
            p.data.normal_(0.0, 0.5 / math.sqrt(fan_in), generator=generator)


def tiny_config(version: str = "mult", base: ColorizerConfig = TINY_MULT) -> ColorizerConfig:
    """The tiny config of a family, derived from the v1 tiny config ``base`` (``Family.tiny_config``)."""
    if version not in FAMILIES:
        raise ValueError(f"unknown version {version!r}; expected one of {', '.join(VERSIONS)}")
    return get_family(version).tiny_config(base)


def build_tiny_state_dicts(config: ColorizerConfig = TINY_MULT, seed: int = 0) -> tuple[dict, dict]:
    """Random ``(checkpoint, clip)`` state dicts with the released key names of ``config.version`` (``clip`` is
    empty for families whose reference encoders have their own files: :func:`tiny_reference_files`)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    prefixes = component_prefixes()
    family = get_family(config.version)
    parts = dict(family.fresh_modules(config))
    if "sketch_encoder" not in parts:  # construction order = random-initialisation order
        parts["sketch_encoder"] = SketchEncoder(config.sketch)
    parts["vae"] = AutoencoderKL(config.vae)
    ckpt: dict[str, torch.Tensor] = {}
    for component, module in parts.items():
        _randomize_zero_layers(module, g)
        dtype = torch.float16 if component == "vae" else torch.float32
        prefix = prefixes[component]
        ckpt.update({prefix + k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()})
    if family.reference_files:
        return ckpt, {}
    from colorize.models.clip import ReferenceEncoder  # open_clip is imported with it

    clip = ReferenceEncoder(config.clip, with_text=True)
    clip_sd = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    return ckpt, clip_sd


def tiny_reference_files(versions: Sequence[str], seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Manifest name → random state dict of the reference-encoder files that families among ``versions`` read
    from their own files (XL: the CLIP-bigG vision tower and the WD tagger), each written once."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for version in versions:
        family = get_family(version)
        if family.reference_files and not set(family.reference_files) <= set(out):
            out.update(zip(family.reference_files, family.tiny_reference_state_dicts(seed)))
    return out


def _save(path: Path, sd: dict[str, torch.Tensor], config: ColorizerConfig) -> None:
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), TINY_METADATA_KEY: "random weights, not for real use"}
    save_safetensors_atomic(sd, path, metadata=meta, overwrite=True)


def write_tiny_weights(
    directory: str | Path, config: ColorizerConfig = TINY_MULT, seed: int = 0, versions: Sequence[str] = ("mult",),
    masks: bool = False,
) -> dict[str, Path]:
    """Write tiny checkpoints of ``versions`` and the CLIP file into ``directory`` (ComfyUI models layout).

    Returns ``{manifest name: path}``: the checkpoints in ``versions`` order, then the CLIP file and, with ``masks``,
    the two ISNet mask networks (``python -m colorize make-tiny-weights`` writes them). A standalone family (the
    chapter-4 GAN: no released file, so no manifest name) writes ``Family.tiny_checkpoint``'s file, listed under
    its file's stem after the checkpoints. ``config``
    is the v1 base the other versions derive from (:func:`tiny_config`). Existing files that are not tiny
    test files are never overwritten (:class:`FileExistsError`, checked before anything is written).
    """
    directory = Path(directory)
    unknown = [v for v in versions if v not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown version(s) {unknown}; expected some of {', '.join(FAMILIES)}")
    standalone = {v: get_family(v).tiny_checkpoint(seed) for v in dict.fromkeys(versions) if get_family(v).standalone}
    checkpoints = {v: checkpoint_name(v) for v in dict.fromkeys(versions) if v not in standalone}
    own_files = [n for v in checkpoints for n in get_family(v).reference_files]
    names = [*checkpoints.values(), default_clip_name(), *dict.fromkeys(own_files), *(ISNET_NAMES if masks else ())]
    paths = {n: directory / manifest_entry(n)["models_subdir"] / manifest_entry(n)["filename"] for n in names}
    own = {Path(rel).stem: (directory / rel, sd, meta) for rel, sd, meta in standalone.values()}
    for path in [*paths.values(), *(p for p, _, _ in own.values())]:
        if path.exists() and TINY_METADATA_KEY not in _metadata_or_empty(path):
            raise FileExistsError(f"{path} exists and is not a tiny test file; refusing to overwrite it. "
                                  "Choose an empty folder for make-tiny-weights.")
    clip_sd: dict[str, torch.Tensor] = {}
    for version in checkpoints:
        cfg = tiny_config(version, config)
        ckpt, version_clip = build_tiny_state_dicts(cfg, seed)
        _save(paths[checkpoints[version]], ckpt, cfg)
        if cfg == config:  # the CLIP file is the base config's build (whichever families are written)
            clip_sd = version_clip
    if not clip_sd:  # the CLIP weights never depend on which versions are written
        clip_sd = build_tiny_state_dicts(config, seed)[1]
    _save(paths[default_clip_name()], clip_sd, config)
    for name, sd in tiny_reference_files(list(checkpoints), seed).items():
        _save_plain(paths[name], sd)
    for offset, name in enumerate(ISNET_NAMES if masks else ()):  # anime and sketch segmenter: one layout
        _save_plain(paths[name], build_tiny_isnet_state_dict(seed + offset))
    for path, sd, meta in own.values():
        save_safetensors_atomic(sd, path, metadata={**meta, TINY_METADATA_KEY: "random weights, not for real use"},
                                overwrite=True)
    first = dict(list(paths.items())[:len(checkpoints)])  # the checkpoints lead ``names``
    return {**first, **{name: path for name, (path, _, _) in own.items()}, **paths}


def build_tiny_isnet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a tiny ISNetDIS (:data:`colorize.masks.isnet.TINY_ISNET`, the released key names; the
    widths are read back from the shapes)."""
    from colorize.masks.isnet import TINY_ISNET, ISNetDIS

    torch.manual_seed(seed)
    return {k: v.detach().contiguous() for k, v in ISNetDIS(TINY_ISNET).state_dict().items()}


def _save_plain(path: Path, sd: dict[str, torch.Tensor]) -> None:
    save_safetensors_atomic(sd, path, metadata={TINY_METADATA_KEY: "random weights, not for real use"},
                            overwrite=True)
