"""Atomic writes: a file appears under its final name complete or not at all, and ``overwrite=False`` never
replaces a file, not even one that another writer creates while this one is writing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from colorize.atomic import atomic_path


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_refused_before_writing(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already exists"), atomic_path(final):
        pytest.fail("the body must not run")  # pragma: no cover
    assert final.read_bytes() == b"mine"


def test_a_file_created_during_the_write_is_kept(tmp_path: Path) -> None:
    """The race: the name is free when the write starts and taken when it ends (another process)."""
    final = tmp_path / "out.bin"
    with pytest.raises(FileExistsError, match="appeared while it was being written"), atomic_path(final) as tmp:
        tmp.write_bytes(b"second writer")
        final.write_bytes(b"first writer")
    assert final.read_bytes() == b"first writer"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left


def test_without_hard_links_the_name_is_still_taken_exclusively(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    final = tmp_path / "out.bin"
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"data")
    assert final.read_bytes() == b"data"
    with pytest.raises(FileExistsError), atomic_path(tmp_path / "race.bin") as tmp:
        tmp.write_bytes(b"second")
        (tmp_path / "race.bin").write_bytes(b"first")
    assert (tmp_path / "race.bin").read_bytes() == b"first"


def test_overwrite_replaces_and_keeps_the_usual_mode(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with atomic_path(final, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~mask
