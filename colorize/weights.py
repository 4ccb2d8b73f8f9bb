"""Where weights live and how missing ones are fetched (``weights_manifest.json``).

A file is looked up as ``<models_dir>/<models_subdir>/<filename>`` (ComfyUI layout) or
``<models_dir>/<filename>``. Downloads go through ``huggingface_hub.hf_hub_download`` into a
temporary folder next to the target, are checked (size, sha256 when known) and only then
renamed into place with ``os.replace``: a partial file never carries the final name, and an
existing file is never overwritten. Failures raise :class:`WeightsMissingError`, whose message
says which file, where it was expected, where it comes from and how to fetch it.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from colorize.errors import WeightsMissingError

Progress = Callable[[int, int], None]  # (downloaded_bytes, total_bytes); total 0 when unknown

MANIFEST_NAME = "weights_manifest.json"
# Repo checkout: next to the package; installed package: colorize/weights_manifest.json (a symlink to the
# root file in the repository, copied into wheels).
MANIFEST_CANDIDATES = (
    Path(__file__).resolve().parent.parent / MANIFEST_NAME,
    Path(__file__).resolve().parent / MANIFEST_NAME,
)
MODELS_DIR_ENV = "COLORIZE_MODELS_DIR"
NO_DOWNLOAD_ENV = "COLORIZE_NO_DOWNLOAD"  # set (not "0"): never download, fail at once with the usual message
OFFLINE_ENVS = (NO_DOWNLOAD_ENV, "HF_HUB_OFFLINE")
NETWORK_PROBE_TIMEOUT_S = 3.0
DEFAULT_CHECKPOINT = "mult-eps-ft"
DEFAULT_CLIP = "clip-vit-h-14"
REQUIRED_FIELDS = (
    "name", "filename", "repo_id", "hub_filename", "revision", "subfolder", "size_bytes", "size_human",
    "sha256", "licence", "purpose", "kind", "models_subdir",
)




# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------


def manifest_path() -> Path:
    for p in MANIFEST_CANDIDATES:
        if p.is_file():
            return p
    raise FileNotFoundError(f"{MANIFEST_NAME} not found (looked at {', '.join(map(str, MANIFEST_CANDIDATES))})")


@lru_cache(maxsize=None)
def _load(path: str) -> tuple[dict[str, Any], ...]:
    files = json.loads(Path(path).read_text(encoding="utf-8"))["files"]
    return tuple(files)


def load_manifest(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """All manifest entries (copies; editing them does not change the cache)."""
    return [dict(e) for e in _load(str(path or manifest_path()))]


def file_names(entry: dict[str, Any]) -> list[str]:
    """The names the entry's file is found under: ``filename`` (the name its download URL saves it as, so a
    file fetched by hand or by the frontend's missing-model dialog needs no renaming), then any
    ``former_filenames`` that earlier releases of this pack saved it as."""
    return [entry["filename"], *(entry.get("former_filenames") or [])]


def manifest_entry(name: str) -> dict[str, Any]:
    """The entry whose ``name`` or one of whose :func:`file_names` is ``name``; KeyError listing names if none."""
    for e in load_manifest():
        if name == e["name"] or name in file_names(e):
            return e
    known = ", ".join(e["name"] for e in load_manifest())
    raise KeyError(f"{name!r} is not in {MANIFEST_NAME} (known: {known})")


def default_checkpoint_name() -> str:
    return DEFAULT_CHECKPOINT


def default_clip_name() -> str:
    return DEFAULT_CLIP


def hub_url(entry: dict[str, Any]) -> str:
    """Where the file comes from: its Hugging Face URL, or the entry's plain ``url`` when it is not on the Hub."""
    if not entry.get("repo_id") and entry.get("url"):
        return str(entry["url"])
    sub = f"{entry['subfolder'].strip('/')}/" if entry.get("subfolder") else ""
    return f"https://huggingface.co/{entry['repo_id']}/resolve/{entry.get('revision') or 'main'}/{sub}{entry['hub_filename']}"


# ---------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------


def default_models_dir() -> Path:
    """``$COLORIZE_MODELS_DIR``, else the platform's user cache folder + ``colorizediffusion/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "colorizediffusion" / "models"


def candidate_paths(entry: dict[str, Any], models_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where the entry's file may be, in search order; the first is where a download goes."""
    d = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    return [place for name in file_names(entry) for place in (d / entry["models_subdir"] / name, d / name)]


def _target(entry: dict[str, Any], models_dir: str | os.PathLike[str] | None) -> Path:
    return candidate_paths(entry, models_dir)[0]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def missing_message(entry: dict[str, Any], models_dir: str | os.PathLike[str] | None, reason: str) -> str:
    """One screen: what is missing, where it was looked for, where it comes from, how to get it."""
    looked = candidate_paths(entry, models_dir)
    d = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    sub = f"{entry['subfolder'].strip('/')}/" if entry.get("subfolder") else ""
    lines = [
        f"weights file not found: {entry['filename']} ({entry['kind']}, {entry['size_human']})",
        f"  purpose:    {entry['purpose']}",
        f"  looked in:  {looked[0]}",
        *(f"              {p}" for p in looked[1:]),
        f"  reason:     {reason}",
        (f"  source:     Hugging Face repo {entry['repo_id']}, file {sub}{entry['hub_filename']} "
         f"(revision {entry.get('revision') or 'main'})" if entry.get("repo_id") else "  source:     direct download"),
        f"              {hub_url(entry)}",
        f"  licence:    {entry['licence']}" + (f" ({entry['licence_note']})" if entry.get("licence_note") else ""),
        "to fetch it:",
        f"  python -m colorize download {entry['name']} --models-dir {shlex.quote(str(d))}",
        f"or download the URL above yourself and save it as {looked[0]}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


class DownloadUnavailable(OSError):
    """No download can start here (offline variable set, or the host is unreachable); the message is the reason."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def check_downloads_allowed() -> None:
    """Raise :class:`DownloadUnavailable` when an offline variable (``COLORIZE_NO_DOWNLOAD``, ``HF_HUB_OFFLINE``)
    is set."""
    for name in OFFLINE_ENVS:
        if env_flag(name):
            raise DownloadUnavailable(f"not on disk and {name} is set")


def check_download_possible(url: str) -> None:
    """Raise :class:`DownloadUnavailable` at once when the host of ``url`` takes no connection within
    ``NETWORK_PROBE_TIMEOUT_S``. Without this, huggingface_hub retries an unreachable host for about a minute
    and prints a line per retry before the same error."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise DownloadUnavailable(f"no network: cannot reach {host} ({_first_line(e)})") from None


def hf_hub_download(**kwargs: Any) -> str:
    """Indirection to ``huggingface_hub.hf_hub_download`` (imported lazily; replaceable in tests), after
    :func:`check_download_possible` on the Hub's endpoint."""
    check_download_possible(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    from huggingface_hub import hf_hub_download as real

    if "tqdm_class" in kwargs and "tqdm_class" not in inspect.signature(real).parameters:
        kwargs.pop("tqdm_class")  # older huggingface_hub: its own bar, no callback
    return real(**kwargs)


def _callback_tqdm(progress: Progress) -> type:
    from tqdm.auto import tqdm

    class CallbackTqdm(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            progress(int(self.n), int(self.total or 0))
            return out

    return CallbackTqdm


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _download_url(url: str, dest: Path, progress: Progress | None, timeout: float = 60.0) -> Path:
    """Plain HTTPS download for entries that are not on the Hub (the caller handles atomic placement)."""
    check_download_possible(url)
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:
        total, done = int(getattr(resp, "headers", {}).get("Content-Length") or 0), 0
        while block := resp.read(1 << 20):
            f.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return dest


def fetch(
    entry: dict[str, Any], models_dir: str | os.PathLike[str] | None = None, progress: Progress | None = None
) -> Path:
    """Fetch ``entry`` into ``<models_dir>/<models_subdir>/<filename>``; an existing file is kept as is."""
    final = _target(entry, models_dir)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{entry['filename']}.", suffix=".download", dir=final.parent))
    try:
        kwargs: dict[str, Any] = {
            "repo_id": entry["repo_id"],
            "filename": entry["hub_filename"],
            "subfolder": entry.get("subfolder") or None,
            "revision": entry.get("revision") or "main",
            "local_dir": str(tmpdir),
        }
        if progress is not None:
            kwargs["tqdm_class"] = _callback_tqdm(progress)
        try:
            check_downloads_allowed()
            got = (Path(hf_hub_download(**kwargs)) if entry.get("repo_id")
                   else _download_url(hub_url(entry), tmpdir / entry["filename"], progress))
        except DownloadUnavailable as e:
            raise WeightsMissingError(missing_message(entry, models_dir, str(e))) from None
        except ImportError:
            raise WeightsMissingError(
                missing_message(entry, models_dir, "huggingface_hub is not installed (pip install huggingface_hub)")
            ) from None
        except Exception as e:  # offline, HTTP errors, disk full, ...: all mean "not available"
            raise WeightsMissingError(missing_message(entry, models_dir, f"download failed ({_first_line(e)})")) from e
        size, want_size = got.stat().st_size, entry.get("size_bytes")
        if want_size is not None and size != want_size:
            raise WeightsMissingError(
                missing_message(entry, models_dir, f"downloaded {size:,} bytes, expected {want_size:,}; discarded")
            )
        if entry.get("sha256_prefix") and not sha256_file(got).startswith(entry["sha256_prefix"].lower()):
            raise WeightsMissingError(
                missing_message(entry, models_dir, f"sha256 does not start with {entry['sha256_prefix']}; discarded")
            )
        if entry.get("sha256"):
            digest = sha256_file(got)
            if digest != entry["sha256"].lower():
                raise WeightsMissingError(
                    missing_message(entry, models_dir, f"sha256 mismatch (got {digest}, expected {entry['sha256']}); discarded")
                )
        if progress is not None:
            progress(size, size)
        if not final.exists():  # never overwrite (another process may have finished first)
            os.replace(got, final)
        return final
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Resolve
# ---------------------------------------------------------------------------------------------


def _find_existing(entry: dict[str, Any], models_dir: str | os.PathLike[str] | None) -> Path | None:
    return next((p for p in candidate_paths(entry, models_dir) if p.is_file()), None)


def resolve(
    name_or_path: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: Progress | None = None,
    accept_alternatives: bool = True,
) -> Path:
    """A local path for a manifest name/filename or an explicit path, downloading if allowed.

    Order: an existing explicit path; the entry's file in ``models_dir`` (``<subdir>/<filename>``
    or ``<filename>``); with ``accept_alternatives``, an existing file of one of the entry's
    ``alternatives`` (e.g. the vision-only CLIP file IPAdapter users already have); then a
    download when ``download`` is true. Otherwise :class:`WeightsMissingError`.
    """
    s = os.fspath(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    if folder.exists() and not folder.is_dir():
        raise WeightsMissingError(f"the models folder {folder} is a file, not a folder: point --models-dir (or "
                                  f"${MODELS_DIR_ENV}) at a folder")
    is_path = isinstance(name_or_path, os.PathLike) or os.sep in s or "/" in s
    try:
        entry = manifest_entry(p.name if is_path else s)
    except KeyError:
        entry = None
    if is_path:
        hint = (
            f" It is the manifest file {entry['name']!r}: `python -m colorize download {entry['name']}` fetches it "
            f"from {hub_url(entry)}."
            if entry
            else ""
        )
        what = "a folder, not a weights file" if p.is_dir() else "no such file"
        raise WeightsMissingError(f"weights file not found: {p} ({what}).{hint}")
    if entry is None:
        d = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
        subdirs = sorted({e["models_subdir"] for e in load_manifest()})
        for cand in [d / sub / s for sub in subdirs] + [d / s]:
            if cand.is_file():
                return cand
        known = ", ".join(e["name"] for e in load_manifest())
        raise WeightsMissingError(
            f"{s!r} is neither an existing file (also looked in {d}) nor a known weights name. "
            f"Known names: {known}. Pass a file path, or a name from weights_manifest.json."
        )
    found = _find_existing(entry, models_dir)
    if found is None and accept_alternatives:
        for alt in entry.get("alternatives") or []:
            found = _find_existing(manifest_entry(alt), models_dir)
            if found is not None:
                break
    if found is not None:
        return found
    if not download:
        raise WeightsMissingError(missing_message(entry, models_dir, "not on disk and downloading is disabled"))
    return fetch(entry, models_dir, progress)


# ---------------------------------------------------------------------------------------------
# CLI: python -m colorize download NAME... [--models-dir DIR]
# ---------------------------------------------------------------------------------------------


def _listing(models_dir: str | os.PathLike[str] | None) -> str:
    rows = []
    for e in load_manifest():
        have = _find_existing(e, models_dir)
        rows.append(
            f"  {e['name']:<22} {e['size_human']:>8}  {e['licence']:<16} {'present' if have else 'missing':<8} {e['purpose'].split(':')[0]}"
        )
    return "\n".join(rows)


def main_download(argv: Sequence[str] | None = None) -> int:
    """``python -m colorize download NAME... [--models-dir DIR] [--list]``; 0 when all files are present."""
    parser = argparse.ArgumentParser(
        prog="python -m colorize download",
        description="Fetch weights listed in weights_manifest.json (an existing file is never overwritten).",
    )
    parser.add_argument("names", nargs="*", help="manifest names or file names (see --list)")
    parser.add_argument("--models-dir", type=Path, default=None, help=f"target folder (default: ${MODELS_DIR_ENV} or {default_models_dir()})")
    parser.add_argument("--list", action="store_true", help="list the known files and whether they are present")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.list or not args.names:
        print(f"models folder: {args.models_dir or default_models_dir()}\n{_listing(args.models_dir)}")
        if not args.names:
            return 0 if args.list else 2
    status = 0
    for name in args.names:
        try:
            entry = manifest_entry(name)
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            status = 1
            continue
        existing = _find_existing(entry, args.models_dir)
        if existing is not None:
            print(f"{entry['name']}: already present at {existing}")
            continue
        print(f"{entry['name']}: downloading {entry['size_human']} from {hub_url(entry)}")
        print(f"  licence: {entry['licence']}" + (f" ({entry['licence_note']})" if entry.get("licence_note") else ""))
        try:
            path = resolve(entry["name"], args.models_dir, download=True, accept_alternatives=False)
        except WeightsMissingError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{entry['name']}: saved to {path}")
    return status


__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CLIP",
    "MODELS_DIR_ENV",
    "REQUIRED_FIELDS",
    "candidate_paths",
    "default_checkpoint_name",
    "default_clip_name",
    "default_models_dir",
    "fetch",
    "hub_url",
    "load_manifest",
    "main_download",
    "manifest_entry",
    "manifest_path",
    "missing_message",
    "resolve",
    "sha256_file",
]
