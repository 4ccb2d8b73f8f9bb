"""Resumable, verified downloads: a weights file gets its final name only after its size and digest are checked.

What a file must be (:class:`Expected`) comes from the manifest where it records it, otherwise from the Hub's own
file metadata, read at download time (``huggingface_hub.get_hf_file_metadata``: the size, and for LFS files the
sha256 as the ETag; for small git files the ETag is the git blob sha1). The bytes go to one known place per
folder, ``<folder>/.colorize-partial/<file>.<digest prefix>.part``; a dropped connection is resumed there with an
HTTP ``Range`` request (in the same call, a few times, and by the next call after a kill), a stalled one times out
(``$COLORIZE_DOWNLOAD_TIMEOUT`` seconds without data, default 30). Bytes that fail the check are discarded with
the reason; a verified file is published under its final name without ever replacing one
(:func:`colorize.atomic.publish_no_replace`), and nothing is left in the partial folder.

The transfer itself is plain ``urllib`` (the Hub's ``resolve`` URL or the CDN location its metadata gives), so it
behaves the same with every huggingface_hub version; huggingface_hub provides the metadata and the user's token.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from colorize.atomic import publish_no_replace

Progress = Callable[[int, int], None]  # (downloaded_bytes, total_bytes); total 0 when unknown

PARTIAL_DIR = ".colorize-partial"
TIMEOUT_ENV = "COLORIZE_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
#: Connections one call opens for a file before giving up (each resumes where the last one stopped).
ATTEMPTS = 4
CHUNK = 1 << 20
DEFAULT_ENDPOINT = "https://huggingface.co"
_HEX64, _HEX40 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


class DownloadError(Exception):
    """A download did not produce a verified file; the message is the reason (one line)."""


@dataclass(frozen=True)
class Expected:
    """What the downloaded bytes must be, and who says so."""

    url: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # small (non-LFS) files on the Hub: their ETag is the git blob id
    sha256_prefix: str | None = None
    source: str = "the manifest"

    @property
    def tag(self) -> str:
        """A short key of the remote version: a partial file is resumed only for the same one."""
        digest = self.sha256 or self.git_sha1 or self.sha256_prefix
        return digest[:16] if digest else "unverified"


def timeout_s() -> float:
    """Seconds without data after which a connection counts as stalled (``$COLORIZE_DOWNLOAD_TIMEOUT``)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise DownloadError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds") from None
    return value if value > 0 else DEFAULT_TIMEOUT_S


def endpoint() -> str:
    """The Hub endpoint (``$HF_ENDPOINT`` for mirrors and tests)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def resolve_url(entry: dict[str, Any]) -> str:
    """The URL the entry's bytes are fetched from: its Hub ``resolve`` URL at the endpoint, or its plain ``url``."""
    if not entry.get("repo_id"):
        return str(entry["url"])
    path = "/".join(p for p in ((entry.get("subfolder") or "").strip("/"), entry["hub_filename"]) if p)
    return (f"{endpoint()}/{entry['repo_id']}/resolve/{urllib.parse.quote(entry.get('revision') or 'main', safe='')}"
            f"/{urllib.parse.quote(path)}")


def _hub_headers() -> dict[str, str]:
    """The user's Hugging Face token and user agent, as huggingface_hub sends them (none if unavailable)."""
    try:
        from huggingface_hub.utils import build_hf_headers

        return dict(build_hf_headers())
    except Exception:  # no huggingface_hub, or no token: anonymous download
        return {}


def manifest_expectation(entry: dict[str, Any], url: str) -> Expected:
    """What the manifest alone says ``entry``'s file is (size, sha256, sha256 prefix; any may be unknown)."""
    return Expected(url=url, size=entry.get("size_bytes"), sha256=(entry.get("sha256") or "").lower() or None,
                    sha256_prefix=(entry.get("sha256_prefix") or "").lower() or None)


def expected_for(entry: dict[str, Any]) -> Expected:
    """What ``entry``'s file must be: the manifest's size/sha256 where recorded, the rest from the Hub's metadata."""
    url = resolve_url(entry)
    base = manifest_expectation(entry, url)
    if not entry.get("repo_id") or (base.size is not None and base.sha256):
        return base
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(url, timeout=timeout_s())
    except Exception as e:
        raise DownloadError(f"could not read the file's metadata from {url} ({_first_line(e)})") from None
    etag = (meta.etag or "").strip('"').lower()
    return Expected(
        url=meta.location or url,
        size=base.size if base.size is not None else meta.size,
        sha256=base.sha256 or (etag if _HEX64.fullmatch(etag) else None),
        git_sha1=etag if _HEX40.fullmatch(etag) and not base.sha256 else None,
        sha256_prefix=base.sha256_prefix,
        source="the manifest" if base.sha256 else "the Hub's metadata",
    )


def partial_path(final: Path, expected: Expected) -> Path:
    return final.parent / PARTIAL_DIR / f"{final.name}.{expected.tag}.part"


def download_verified(entry: dict[str, Any], final: Path, progress: Progress | None = None
                      ) -> tuple[Path, str | None, Expected]:
    """Download ``entry`` to ``final`` (resuming a partial file), verify it, publish it; ``(path, sha256,
    expected)``. An existing ``final`` is never replaced: if another process published it first, that file is
    returned with ``sha256`` None (these bytes were not published). Raises :class:`DownloadError` with the reason; verified-bad bytes are deleted, an interrupted
    partial file is kept for the next call."""
    expected = expected_for(entry)
    part = partial_path(final, expected)
    part.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(part)
    with _exclusive(part) as f:
        _transfer(f, part, expected, progress)
        f.flush()
        try:
            sha256 = check_bytes(part, expected)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        try:
            publish_no_replace(part, final)
        except FileExistsError:  # another process published it first: keep theirs (its own check and record)
            sha256 = None
        part.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        part.parent.rmdir()  # only when empty
    return final, sha256, expected


@contextlib.contextmanager
def _exclusive(part: Path) -> Iterator[Any]:
    """The partial file opened for appending, locked against a second downloader of the same file."""
    f = open(part, "ab")
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no advisory locks (Windows): a concurrent second download is caught by the digest
            pass
        except OSError:
            raise DownloadError(f"another process is downloading {part.name.rsplit('.', 2)[0]} into {part.parent} "
                                "right now; wait for it to finish") from None
        yield f
    finally:
        f.close()


def _remove_stale_partials(part: Path) -> None:
    """Partial files of the same file for another remote version can never be resumed: remove them."""
    stem = part.name.rsplit(".", 2)[0]
    for other in part.parent.glob(f"{glob.escape(stem)}.*.part"):
        if other != part and other.name.rsplit(".", 2)[0] == stem:
            other.unlink(missing_ok=True)


def _transfer(f: Any, part: Path, expected: Expected, progress: Progress | None) -> None:
    """Append the missing bytes to ``f``; reconnect (resuming) up to :data:`ATTEMPTS` times while connections
    bring data."""
    timeout = timeout_s()
    last, before = "", -1
    for _ in range(ATTEMPTS):
        have = f.tell()
        if last and have == before:  # the last connection brought nothing: more of the same will not help
            break
        before = have
        if expected.size is not None and have >= expected.size:
            if have > expected.size:
                f.truncate(0)
                f.seek(0)
                continue
            return
        try:
            _one_connection(f, expected, have, timeout, progress)
            return
        except (TimeoutError, socket.timeout):
            last = f"no data for {timeout:g} s (the server stalled; ${TIMEOUT_ENV} sets the wait)"
        except (http.client.IncompleteRead, ConnectionError, http.client.HTTPException) as e:
            last = f"the connection dropped ({_first_line(e)})"
        except urllib.error.HTTPError as e:
            raise DownloadError(f"the server answered HTTP {e.code} {e.reason} for {expected.url}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                last = f"no answer for {timeout:g} s (${TIMEOUT_ENV} sets the wait)"
            else:
                last = f"cannot connect ({_first_line(reason if isinstance(reason, BaseException) else e)})"
        f.flush()
    kept = part.stat().st_size
    raise DownloadError(f"{last}; {kept:,} bytes are kept in {part} and the next download resumes from there "
                        "(`python -m colorize download --clean` removes them)")


def _one_connection(f: Any, expected: Expected, have: int, timeout: float, progress: Progress | None) -> None:
    headers = {**(_hub_headers() if expected.url.startswith(endpoint()) else {}), "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(expected.url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after ``have``: the partial file may already be complete
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored the range: start over
            f.truncate(0)
            f.seek(0)
            have = 0
        length = int(resp.headers.get("Content-Length") or -1)
        total = expected.size or (have + max(length, 0))
        limit = None if expected.size is None else expected.size + 1  # one byte more shows "too long"
        received = 0
        while block := resp.read1(CHUNK):  # what has arrived: a stall loses nothing already received
            f.write(block)
            have, received = have + len(block), received + len(block)
            if progress is not None:
                progress(have, total)
            if limit is not None and have >= limit:
                return
        if 0 <= received < length:  # http.client does not raise for a body cut short when reading in blocks
            raise ConnectionError(f"the server closed the connection after {received:,} of {length:,} bytes")


def check_bytes(path: Path, expected: Expected) -> str:
    """The file's sha256 after checking its size and digest against ``expected``; :class:`DownloadError` with the
    difference otherwise."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(f"received {size:,} bytes, but {expected.source} gives the file {expected.size:,} bytes; "
                            "the bytes were discarded (a proxy or server sent something else)")
    sha256, git_sha1 = digests(path, with_git=expected.git_sha1 is not None)
    if expected.sha256 and sha256 != expected.sha256:
        raise DownloadError(f"sha256 {sha256} does not match {expected.sha256} from {expected.source}; the bytes "
                            "were discarded")
    if expected.git_sha1 and git_sha1 != expected.git_sha1:
        raise DownloadError(f"git blob id {git_sha1} does not match {expected.git_sha1} from {expected.source}; the "
                            "bytes were discarded")
    if expected.sha256_prefix and not sha256.startswith(expected.sha256_prefix):
        raise DownloadError(f"sha256 {sha256} does not start with {expected.sha256_prefix} (the prefix in the file "
                            "name); the bytes were discarded")
    return sha256


def digests(path: Path, with_git: bool = False) -> tuple[str, str | None]:
    """``(sha256, git blob sha1 or None)`` of a file, in one pass."""
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % path.stat().st_size) if with_git else None
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            sha.update(block)
            if git is not None:
                git.update(block)
    return sha.hexdigest(), git.hexdigest() if git is not None else None


def partial_files(folder: Path) -> list[Path]:
    """Leftovers of interrupted downloads in ``folder``: this module's partial files and the temporary files
    earlier versions left (``.<name>.*.download`` folders, ``.<name>.*.part`` files)."""
    found = list((folder / PARTIAL_DIR).glob("*.part")) if (folder / PARTIAL_DIR).is_dir() else []
    if folder.is_dir():
        found += [p for p in folder.glob(".*.download") if p.is_dir()]
        found += [p for p in folder.glob(".*.part") if p.is_file()]
    return found


def remove_partials(folders: list[Path]) -> tuple[int, int, list[Path]]:
    """Remove the leftovers in ``folders``: ``(count, bytes freed, files skipped because a download is writing
    them)``."""
    count = freed = 0
    busy: list[Path] = []
    for folder in folders:
        for path in partial_files(folder):
            size = _tree_size(path)
            if path.is_file() and _locked(path):
                busy.append(path)
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            count, freed = count + 1, freed + size
        with contextlib.suppress(OSError):
            (folder / PARTIAL_DIR).rmdir()
    return count, freed, busy


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _locked(path: Path) -> bool:
    try:
        import fcntl
    except ImportError:
        return False
    with open(path, "ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def _first_line(e: Any) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


__all__ = [
    "ATTEMPTS",
    "DownloadError",
    "Expected",
    "PARTIAL_DIR",
    "TIMEOUT_ENV",
    "check_bytes",
    "digests",
    "download_verified",
    "endpoint",
    "expected_for",
    "manifest_expectation",
    "partial_files",
    "partial_path",
    "remove_partials",
    "resolve_url",
    "timeout_s",
]
