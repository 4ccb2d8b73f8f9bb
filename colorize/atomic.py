"""Atomic file writes: a file appears under its final name complete, or not at all (downloads, exports, images)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it into place.

    On any error the temporary file is removed and ``final`` is left untouched. With
    ``overwrite=False`` an existing ``final`` is never replaced, even one another process creates while this
    one writes: the file is published with a hard link, which fails if the name exists (check-then-rename
    would let two writers both "succeed", the second silently replacing the first).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; not overwriting it (delete or rename it first)")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # temp files are private (0600); give the result the usual mode
        if overwrite:
            os.replace(tmp, final)
        else:
            publish_no_replace(Path(tmp), final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def publish_no_replace(tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final`` only if no file has that name (atomically); ``tmp`` keeps its own name too
    when hard links are available (the caller removes it)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(f"{final} appeared while it was being written (another process?); not overwriting "
                              "it (delete or rename it first)") from None
    except OSError:  # no hard links on this file system: reserve the name exclusively, then move into it
        fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # FileExistsError if taken
        os.close(fd)
        os.replace(tmp, final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None, overwrite: bool = False
) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_path`."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file ({} if none)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
