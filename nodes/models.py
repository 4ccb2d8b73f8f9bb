"""Model folders and weights inside ComfyUI: folder registration, file pickers, first-use downloads.

Checkpoints live in ComfyUI's ``models/colorizediffusion``, the chapter-4 GAN files in
``models/colorizediffusion_gan``, line-extractor weights in ``models/lineart`` and the ISNet mask networks in
``models/isnet``, the XL tagger in ``models/wd_tagger`` (all registered here, keeping any paths users set for
``colorizediffusion:`` / ``colorizediffusion_gan:`` / ``lineart:`` / ``isnet:`` / ``wd_tagger:`` in
``extra_model_paths.yaml``); the reference encoders (OpenCLIP ViT-H/14, XL's CLIP-bigG) live in the core
``models/clip_vision`` folder, so the files IPAdapter and SDXL users already have are found too. A manifest
file (``weights_manifest.json``) that is missing is downloaded on first use of its loader, never at import,
into the folder's first path, through :func:`colorize.weights.fetch` (resumable, verified against the manifest
or the Hub's metadata before it gets its name; recorded in the folder's lock file, whose size is re-checked on every
use). Outside ComfyUI the folders are ``$COLORIZE_MODELS_DIR/<folder>`` (the core's default models dir).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from colorize.errors import WeightsMissingError
from colorize.families.gan import GAN_MODELS_SUBDIR
from colorize.weights import (
    NO_DOWNLOAD_ENV,
    default_models_dir,
    fetch,
    file_names,
    hub_url,
    load_manifest,
    usable_existing,
)

from .host import ManagedModule, Progress, comfy_module

CHECKPOINT_FOLDER = "colorizediffusion"
#: The chapter-4 GAN files (thesis §4). A folder of their own: the diffusion loaders' picker lists
#: ``models/colorizediffusion`` recursively, and a GAN file is no diffusion checkpoint.
GAN_FOLDER = GAN_MODELS_SUBDIR
CLIP_FOLDER = "clip_vision"
LINEART_FOLDER = "lineart"
SAM_FOLDER = "sams"  # segment-anything checkpoints (the folder other packs use for SAM too)
#: ISNet segmenters (anime and sketch). A folder of their own, not ``colorizediffusion/masks``: the checkpoint
#: picker lists ``models/colorizediffusion`` recursively and would offer them as colorizers; no other pack keeps
#: ISNet safetensors in a shared folder (ComfyUI-RMBG uses ``models/RMBG/<model>``), and the name says what is in it.
ISNET_FOLDER = "isnet"
#: The WD v1.4 SwinV2 tagger that ColorizeDiffusion XL reads beside CLIP-bigG (the folder name tagger packs use).
TAGGER_FOLDER = "wd_tagger"
#: the folders this pack adds to ComfyUI
PACK_FOLDERS = (CHECKPOINT_FOLDER, GAN_FOLDER, LINEART_FOLDER, SAM_FOLDER, ISNET_FOLDER, TAGGER_FOLDER)
_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def folder_paths() -> Any:
    return comfy_module("folder_paths")


def register_folders() -> None:
    """Register the pack's folders (:data:`PACK_FOLDERS`) with ComfyUI (no-op outside ComfyUI).

    Paths already configured for a name (``extra_model_paths.yaml`` is read before packs load) are
    kept first; the default folder is added after them; the extension filter becomes ComfyUI's usual one.
    """
    fp = folder_paths()
    if fp is None:
        return
    for folder in PACK_FOLDERS:
        default = os.path.join(fp.models_dir, folder)
        paths, exts = fp.folder_names_and_paths.get(folder, ([], set()))
        paths = list(paths)
        if default not in paths:
            paths.append(default)
        fp.folder_names_and_paths[folder] = (paths, set(exts) | set(fp.supported_pt_extensions))


def folder_dirs(folder: str) -> list[Path]:
    """The directories searched for ``folder`` (ComfyUI's list, or ``<default models dir>/<folder>``)."""
    fp = folder_paths()
    if fp is not None:
        return [Path(p) for p in fp.get_folder_paths(folder)]
    return [default_models_dir() / folder]


def manifest_files(folder: str, versions: tuple[str | None, ...] | None = None) -> list[dict[str, Any]]:
    """Manifest entries stored in ``folder`` (optionally only checkpoint versions in ``versions``)."""
    return [e for e in load_manifest()
            if e["models_subdir"] == folder and (versions is None or e.get("version") in versions)]


def list_files(folder: str, versions: tuple[str | None, ...] | None = None) -> list[str]:
    """File-picker choices: the files present in ``folder`` plus the downloadable manifest files."""
    fp = folder_paths()
    if fp is not None:
        present = list(fp.get_filename_list(folder))
    else:
        present = []
        for d in folder_dirs(folder):
            if d.is_dir():
                present += [p.relative_to(d).as_posix() for p in d.rglob("*") if p.suffix in _EXTS and p.is_file()]
    names = [e["filename"] for e in manifest_files(folder, versions)]
    return sorted(set(present)) + [n for n in names if n not in present]


def find_file(folder: str, name: str) -> Path | None:
    """``name`` in one of the folder's directories, or None. Outside ComfyUI a name that leads out of the
    directories (``..``, an absolute path) is never followed; files symlinked into them are found."""
    fp = folder_paths()
    if fp is not None:
        path = fp.get_full_path(folder, name)
        return Path(path) if path else None
    for d in folder_dirs(folder):
        base = os.path.normpath(d)
        candidate = os.path.normpath(os.path.join(base, name))
        if os.path.commonpath([base, candidate]) == base and candidate != base and os.path.isfile(candidate):
            return Path(candidate)
    return None


@dataclass(frozen=True)
class _LoadedFile:
    module: ManagedModule
    stamp: tuple[int, int]


_LOADED_FILES: dict[tuple[str, str], _LoadedFile] = {}  # (loader, resolved path) → module, re-read when it changes


def load_model_file(folder: str, name: str, build: Callable[[Path], nn.Module], role: str = "unet") -> ManagedModule:
    """``build(path)`` of ``name`` in ``folder`` (downloaded first if it is a missing manifest file), kept between
    runs and read again when the file changes (modification time or size); ComfyUI places it as ``role``."""
    path = resolve_file(folder, name)
    st = path.stat()
    key, stamp = (getattr(build, "__qualname__", repr(build)), str(Path(path).resolve())), (st.st_mtime_ns, st.st_size)
    loaded = _LOADED_FILES.get(key)
    if loaded is None or loaded.stamp != stamp:
        loaded = _LOADED_FILES[key] = _LoadedFile(ManagedModule(build(path), role), stamp)
    return loaded.module


def _download_progress(label: str) -> Any:
    bar: dict[str, Progress] = {}
    mib = 1 << 20

    def progress(done: int, total: int) -> None:
        if "p" not in bar:
            bar["p"] = Progress(max(1, total // mib))
        bar["p"].update(done // mib, max(1, total // mib) if total else None)

    return progress


def resolve_file(folder: str, name: str) -> Path:
    """The local path of ``name`` in ``folder``; a missing manifest file is downloaded into the folder's
    first path (progress in ComfyUI's bar). Errors name the file, the folders searched and the source."""
    entry = next((e for e in load_manifest() if name in file_names(e) and e["models_subdir"] == folder), None)
    # A workflow saved with a former file name finds the file under its current (download) name, and back.
    for candidate in [name, *(file_names(entry) if entry else [])]:
        found = find_file(folder, candidate)
        if found is not None and (entry is None or usable_existing(entry, found) is not None):
            return found
    dirs = folder_dirs(folder)
    where = f"ComfyUI model folder '{folder}': " + ", ".join(str(d) for d in dirs)
    if entry is None:
        raise WeightsMissingError(
            f"{name} not found in the {where}. Put the file there (or add a '{folder}:' path in "
            "extra_model_paths.yaml) and refresh the node list."
        )
    # Download into the folder itself: an entry with an empty models_subdir targets <dir>/<filename>.
    try:
        return fetch({**entry, "models_subdir": ""}, dirs[0], progress=_download_progress(name))
    except WeightsMissingError as e:
        reason = next((line.split(":", 1)[1].strip() for line in str(e).splitlines()
                       if line.strip().startswith("reason:")), str(e).splitlines()[0])
        raise WeightsMissingError(missing_message(entry, folder, dirs, reason)) from None


def missing_message(entry: dict[str, Any], folder: str, dirs: list[Path], reason: str) -> str:
    """One screen for the ComfyUI error dialog: which file, which folder, why, where it comes from, the fix."""
    sub = f"{entry['subfolder'].strip('/')}/" if entry.get("subfolder") else ""
    return "\n".join([
        f"ColorizeDiffusion: weights file {entry['filename']} is missing ({entry['kind']}, {entry['size_human']}).",
        f"  folder:  ComfyUI model folder '{folder}' = " + ", ".join(str(d) for d in dirs),
        f"  reason:  {reason}",
        f"  source:  {hub_url(entry)}",
        f"           (Hugging Face repo {entry['repo_id']}, file {sub}{entry['hub_filename']}; licence {entry['licence']})",
        f"  fix:     download that URL, save it as {dirs[0] / entry['filename']}, then queue the workflow again.",
    ])


def model_links(folder: str, name: str) -> list[dict[str, str]]:
    """``properties.models`` entries for a UI workflow's loader node (the frontend's download prompt). A file
    whose download URL ends in another name (the WD tagger's ``model.safetensors``) gets none: the frontend would
    save it under the URL's name, which the node does not ask for; its loader downloads it on first run."""
    return [{"name": e["filename"], "url": hub_url(e), "directory": folder}
            for e in load_manifest() if e["filename"] == name and e["models_subdir"] == folder
            and hub_url(e).rsplit("/", 1)[-1] == name]


__all__ = [
    "CHECKPOINT_FOLDER",
    "CLIP_FOLDER",
    "GAN_FOLDER",
    "ISNET_FOLDER",
    "LINEART_FOLDER",
    "NO_DOWNLOAD_ENV",
    "PACK_FOLDERS",
    "SAM_FOLDER",
    "TAGGER_FOLDER",
    "find_file",
    "folder_dirs",
    "folder_paths",
    "list_files",
    "load_model_file",
    "manifest_files",
    "missing_message",
    "model_links",
    "register_folders",
    "resolve_file",
]
