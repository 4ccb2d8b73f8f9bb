"""Where weights live and how missing ones are fetched (``weights_manifest.json``).

A file is looked up as ``<models_dir>/<models_subdir>/<filename>`` (ComfyUI layout) or
``<models_dir>/<filename>``. Downloads resume after an interruption and are verified against the manifest or
the Hub's metadata before the file gets its final name (:mod:`colorize.download`); the verified size and sha256
go into the folder's lock file (:mod:`colorize.weights_lock`), and every later use re-checks the size. An existing
file is never overwritten. Failures raise :class:`WeightsMissingError`, whose message says which file, where it
was expected, where it comes from and how to fetch it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from colorize import download, weights_lock
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hex)."""
    return download.digests(Path(path))[0]


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
    ``NETWORK_PROBE_TIMEOUT_S`` (instead of a minute of retries before the same error)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise DownloadUnavailable(f"no network: cannot reach {host} ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def fetch(
    entry: dict[str, Any], models_dir: str | os.PathLike[str] | None = None, progress: Progress | None = None
) -> Path:
    """Fetch ``entry`` into ``<models_dir>/<models_subdir>/<filename>``, verified (:mod:`colorize.download`) and
    recorded in the folder's lock file (:mod:`colorize.weights_lock`); an existing file is kept as is."""
    final = _target(entry, models_dir)
    if final.exists():
        return final
    try:
        check_downloads_allowed()
        check_download_possible(download.resolve_url(entry))
        path, sha256, expected = download.download_verified(entry, final, progress)
    except (DownloadUnavailable, download.DownloadError) as e:
        raise WeightsMissingError(missing_message(entry, models_dir, str(e))) from None
    except ImportError:
        raise WeightsMissingError(
            missing_message(entry, models_dir, "huggingface_hub is not installed (pip install huggingface_hub)")
        ) from None
    except OSError as e:  # disk full, permissions, ...
        raise WeightsMissingError(missing_message(entry, models_dir, f"download failed ({_first_line(e)})")) from None
    if sha256 is not None:
        source = expected.source if (expected.sha256 or expected.git_sha1) else "first download (no published digest)"
        weights_lock.record(path, path.stat().st_size, sha256, source, expected.url.split("?")[0])
    return path


def usable_existing(entry: dict[str, Any], path: Path) -> Path | None:
    """``path`` if it may be used as ``entry``'s file, after a size check (one ``stat``).

    A file this pack downloaded and verified (it has a lock entry) whose size has changed since is damaged: it is
    moved aside (``<name>.rejected``) with a notice and counts as missing. A file placed by hand is the user's
    (a converted or fine-tuned model may carry the released name): it is used, with a one-line notice that says
    how it differs from the manifest, or that ``verify`` can check it.
    """
    locked = weights_lock.recorded(path)
    size = path.stat().st_size
    if locked is not None and size != locked.size:
        aside = weights_lock.move_aside(path)
        weights_lock.notice(f"{path} changed after it was verified on {locked.verified_at} ({size:,} bytes, "
                            f"verified {locked.size:,}); moved aside to {aside.name}")
        return None
    if locked is None and entry.get("size_bytes") is not None and size != entry["size_bytes"]:
        weights_lock.notice(f"{path} has {size:,} bytes, the released {entry['name']} has {entry['size_bytes']:,}: "
                            "used as it is (your own file?); delete it to download the released one")
    elif locked is None:
        weights_lock.notice(f"{path} was not downloaded by this pack and has not been verified; "
                            f"`python -m colorize verify {entry['name']}` checks it")
    return path


# ---------------------------------------------------------------------------------------------
# Resolve
# ---------------------------------------------------------------------------------------------


def _find_existing(entry: dict[str, Any], models_dir: str | os.PathLike[str] | None, check: bool = True) -> Path | None:
    """The entry's file in ``models_dir``; with ``check``, only one that passes :func:`usable_existing`."""
    candidates = candidate_paths(entry, models_dir)
    for p in candidates:
        if p.is_file() and (not check or usable_existing(entry, p) is not None):
            return p
    pattern = entry.get("file_pattern")  # a release whose file name is not known: any file matching it
    for folder in dict.fromkeys(p.parent for p in candidates) if pattern else ():
        for p in sorted(folder.glob(pattern)):
            if p.is_file() and (not check or usable_existing(entry, p) is not None):
                return p
    return None


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
        have = _find_existing(e, models_dir, check=False)
        rows.append(
            f"  {e['name']:<22} {e['size_human']:>8}  {e['licence']:<16} {'present' if have else 'missing':<8} {e['purpose'].split(':')[0]}"
        )
    return "\n".join(rows)


def _download_folders(models_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Every folder a download into ``models_dir`` can write: the folder itself and each manifest subfolder."""
    d = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    return [d, *sorted({d / e["models_subdir"] for e in load_manifest() if e["models_subdir"]})]


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"


def clean_partial_downloads(models_dir: str | os.PathLike[str] | None) -> str:
    """Remove the leftovers of interrupted downloads (:func:`colorize.download.remove_partials`); a summary."""
    count, freed, busy = download.remove_partials(_download_folders(models_dir))
    text = f"removed {count} partial download file(s), freed {_human(freed)}"
    return text + (f"; {len(busy)} kept because a download is writing them: {', '.join(map(str, busy))}"
                   if busy else "")


def _names_parser(command: str, description: str, names_help: str) -> argparse.ArgumentParser:
    """The parser of ``python -m colorize COMMAND NAME... [--models-dir DIR]``."""
    parser = argparse.ArgumentParser(prog=f"python -m colorize {command}", description=description)
    parser.add_argument("names", nargs="*", help=names_help)
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"models folder (default: ${MODELS_DIR_ENV} or {default_models_dir()})")
    return parser


def main_download(argv: Sequence[str] | None = None) -> int:
    """``python -m colorize download NAME... [--models-dir DIR] [--list] [--clean]``; 0 when all files are
    present and pass their size check, 2 after an ``error:`` (unknown name, failed download)."""
    parser = _names_parser("download", "Fetch weights listed in weights_manifest.json, verified against the manifest "
                           "or the Hub's metadata (an interrupted download resumes; an existing file is never "
                           "overwritten).", "manifest names or file names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the known files and whether they are present")
    parser.add_argument("--clean", action="store_true", help="remove partial files of interrupted downloads")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.clean:
        print(clean_partial_downloads(args.models_dir))
    if args.list or not args.names:
        if args.list or not args.clean:
            print(f"models folder: {args.models_dir or default_models_dir()}\n{_listing(args.models_dir)}")
        if not args.names:
            return 0 if args.list or args.clean else 2
    status = 0
    for name in args.names:
        try:
            entry = manifest_entry(name)
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            status = 2
            continue
        existing = _find_existing(entry, args.models_dir)
        if existing is not None:
            locked = weights_lock.recorded(existing)
            state = f"verified {locked.verified_at}" if locked else f"not verified: `python -m colorize verify {entry['name']}`"
            print(f"{entry['name']}: already present at {existing} ({state})")
            continue
        print(f"{entry['name']}: downloading {entry['size_human']} from {hub_url(entry)}")
        print(f"  licence: {entry['licence']}" + (f" ({entry['licence_note']})" if entry.get("licence_note") else ""))
        try:
            path = resolve(entry["name"], args.models_dir, download=True, accept_alternatives=False)
        except WeightsMissingError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        print(f"{entry['name']}: saved to {path} (size and sha256 verified)")
    return status


def verify_file(entry: dict[str, Any], path: Path) -> str:
    """Recompute ``path``'s sha256 and compare it with the manifest, the lock file or (online) the Hub's metadata;
    a one-line result. A mismatch moves the file aside and raises :class:`WeightsMissingError`."""
    locked = weights_lock.recorded(path)
    expected = download.manifest_expectation(entry, hub_url(entry))
    if not expected.sha256 and locked is not None:
        expected = download.Expected(url=locked.origin or expected.url, size=locked.size, sha256=locked.sha256,
                                     sha256_prefix=expected.sha256_prefix, source=f"the lock file ({locked.source})")
    elif not expected.sha256 and entry.get("repo_id"):
        try:
            check_downloads_allowed()
            check_download_possible(download.resolve_url(entry))
            expected = download.expected_for(entry)
        except (DownloadUnavailable, download.DownloadError, ImportError) as e:
            raise WeightsMissingError(f"{path}: cannot verify it: no digest in the manifest or the lock file, and "
                                      f"the Hub's metadata is out of reach ({e})") from None
    try:
        sha256 = download.check_bytes(path, expected)
    except download.DownloadError as e:
        aside = weights_lock.move_aside(path)
        reason = str(e).replace("; the bytes were discarded", "")
        raise WeightsMissingError(f"{path} is damaged or not {entry['name']}'s file: {reason}; moved aside to "
                                  f"{aside.name}. Fetch it again: python -m colorize download {entry['name']}") from None
    if not (expected.sha256 or expected.git_sha1):
        weights_lock.record(path, path.stat().st_size, sha256, "first verification (no published digest)")
        return f"{entry['name']}: recorded {path} (sha256 {sha256}; no published digest to compare with)"
    if locked is None or locked.sha256 != sha256:
        weights_lock.record(path, path.stat().st_size, sha256, expected.source, expected.url.split("?")[0])
    return f"{entry['name']}: OK {path} (sha256 {sha256[:16]}…, {_human(path.stat().st_size)}, as {expected.source})"


def main_verify(argv: Sequence[str] | None = None) -> int:
    """``python -m colorize verify [NAME...] [--models-dir DIR]``: recompute the sha256 of the present manifest
    files (all, or the named ones); 0 when all match, 1 when one was damaged (moved aside), 2 on bad names."""
    parser = _names_parser("verify", "Check the sha256 of downloaded weights against the manifest, the lock file "
                           "or the Hub's metadata; a file that fails is moved aside as <name>.rejected.",
                           "manifest names or file names (default: every present file)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        entries = [manifest_entry(n) for n in args.names] or load_manifest()
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    status, checked = 0, 0
    for entry in entries:
        path = _find_existing(entry, args.models_dir, check=False)
        if path is None:
            if args.names:
                print(f"{entry['name']}: not present (python -m colorize download {entry['name']})")
                status = max(status, 1)
            continue
        checked += 1
        try:
            print(verify_file(entry, path))
        except WeightsMissingError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
    if not checked and not args.names:
        print(f"no manifest files present in {args.models_dir or default_models_dir()}")
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
    "clean_partial_downloads",
    "fetch",
    "hub_url",
    "load_manifest",
    "main_download",
    "main_verify",
    "manifest_entry",
    "manifest_path",
    "missing_message",
    "resolve",
    "sha256_file",
    "usable_existing",
    "verify_file",
]
