"""Downloads against a fake Hugging Face Hub on 127.0.0.1: verified before they get their final name, resumed after
an interruption (in the same call and after kill -9), stalls time out, garbage is discarded, the lock file notices a
changed file, ``download --clean`` and ``verify``."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub

from colorize import download, weights_lock
from colorize import weights as w
from colorize.errors import WeightsMissingError

REPO = Path(__file__).resolve().parents[2]
NAME = "switch-eps"  # a manifest entry without a recorded size or sha256: the Hub's metadata is the reference


def _entry(**changes: object) -> dict:
    return {**w.manifest_entry(NAME), **changes}


def _serve(hub: FakeHub, content: bytes, entry: dict | None = None, **options: object):
    e = entry or _entry()
    return hub.add(e["repo_id"], e["hub_filename"], content, **options)


def _final(models: Path, entry: dict | None = None) -> Path:
    e = entry or _entry()
    return models / e["models_subdir"] / e["filename"]


def _leftovers(models: Path) -> list[Path]:
    """Every file besides the published weights and the lock file."""
    return sorted(p for p in models.rglob("*") if p.is_file() and not p.name.endswith((".safetensors", ".pth"))
                  and p.name != weights_lock.LOCK_NAME)


def test_a_download_is_verified_against_the_hubs_metadata_and_recorded(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = os.urandom(300_000)
    _serve(fake_hub, content)
    seen: list[tuple[int, int]] = []
    path = w.resolve(NAME, tmp_path, download=True, progress=lambda n, t: seen.append((n, t)))
    assert path == _final(tmp_path) and path.read_bytes() == content
    assert _leftovers(tmp_path) == [] and not (path.parent / download.PARTIAL_DIR).exists()
    locked = weights_lock.recorded(path)
    assert locked is not None and locked.sha256 == hashlib.sha256(content).hexdigest()
    assert locked.size == len(content) and locked.source == "the Hub's metadata"
    assert seen[-1] == (len(content), len(content))


def test_a_truncated_response_is_resumed_in_the_same_call(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = os.urandom(200_000)
    _serve(fake_hub, content, mode="truncate-once")
    assert w.fetch(_entry(), tmp_path).read_bytes() == content
    assert fake_hub.gets(_entry()["hub_filename"]) == [None, f"bytes={len(content) // 2}-"]
    assert _leftovers(tmp_path) == []


def test_garbage_is_discarded_with_the_size_message(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve(fake_hub, os.urandom(500_000), mode="garbage")  # the metadata says 500,000 bytes; 4 KB arrive
    with pytest.raises(WeightsMissingError, match=r"received 4,096 bytes, but the Hub's metadata gives the file "
                                                  r"500,000 bytes; the bytes were discarded"):
        w.fetch(_entry(), tmp_path)
    assert not _final(tmp_path).exists() and _leftovers(tmp_path) == []
    assert w.main_download([NAME, "--models-dir", str(tmp_path)]) == 2  # never "already present"


def test_bytes_of_the_right_size_with_another_digest_are_discarded(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = os.urandom(100_000)
    _serve(fake_hub, content, mode="other-bytes")
    with pytest.raises(WeightsMissingError, match=f"does not match {hashlib.sha256(content).hexdigest()} from "
                                                  "the Hub's metadata; the bytes were discarded"):
        w.fetch(_entry(), tmp_path)
    assert not _final(tmp_path).exists() and _leftovers(tmp_path) == []


def test_the_manifest_digest_wins_over_the_servers(fake_hub: FakeHub, tmp_path: Path) -> None:
    """A server (or proxy) that serves other bytes with matching metadata is caught by the manifest's digest."""
    content = os.urandom(50_000)
    _serve(fake_hub, content)
    entry = _entry(size_bytes=len(content), sha256=hashlib.sha256(b"the released file").hexdigest())
    with pytest.raises(WeightsMissingError, match="from the manifest; the bytes were discarded"):
        w.fetch(entry, tmp_path)
    assert fake_hub.requests and all(m == "GET" for m, p, _ in fake_hub.requests if p.endswith(".safetensors"))
    assert not _final(tmp_path).exists()


def test_small_git_files_are_checked_by_their_blob_id(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = b'{"a small": "config"}'
    _serve(fake_hub, content, lfs=False)
    path = w.fetch(_entry(), tmp_path)
    assert path.read_bytes() == content and weights_lock.recorded(path).sha256 == hashlib.sha256(content).hexdigest()
    _serve(fake_hub, content, lfs=False, mode="other-bytes")
    with pytest.raises(WeightsMissingError, match="git blob id"):
        w.fetch(_entry(), tmp_path / "again")


def test_a_stall_times_out_with_a_named_error_and_the_next_call_resumes(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = os.urandom(400_000)
    served = _serve(fake_hub, content, mode="stall", stall_after=100_000)
    t0 = time.monotonic()
    with pytest.raises(WeightsMissingError) as e:
        w.fetch(_entry(), tmp_path)
    elapsed = time.monotonic() - t0
    assert "no data for 2 s (the server stalled; $COLORIZE_DOWNLOAD_TIMEOUT sets the wait)" in str(e.value)
    assert "the next download resumes from there" in str(e.value)
    assert elapsed < 20, f"{elapsed:.1f} s"  # two connections of 2 s each, not the server's 60 s
    assert not _final(tmp_path).exists()
    (part,) = (_final(tmp_path).parent / download.PARTIAL_DIR).glob("*.part")
    assert part.stat().st_size == 100_000
    served.mode = "good"
    assert w.fetch(_entry(), tmp_path).read_bytes() == content
    assert fake_hub.gets(_entry()["hub_filename"])[-1] == "bytes=100000-"
    assert _leftovers(tmp_path) == []


def test_a_killed_download_resumes_to_a_verified_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = os.urandom(4_000_000)
    served = _serve(fake_hub, content, mode="slow", slow_chunk=32_768, slow_tick_s=0.02)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "colorize", "download", NAME, "--models-dir", str(tmp_path)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial_dir = _final(tmp_path).parent / download.PARTIAL_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list(partial_dir.glob("*.part")) if partial_dir.is_dir() else []
        if parts and parts[0].stat().st_size >= 500_000:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the download never started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = parts[0].stat().st_size
    assert 0 < kept < len(content) and not _final(tmp_path).exists()
    served.mode = "good"
    path = w.fetch(_entry(), tmp_path)
    assert path.read_bytes() == content
    resumed_from = int(fake_hub.gets(_entry()["hub_filename"])[-1].split("=")[1].rstrip("-"))
    assert resumed_from >= kept  # the bytes already there were not fetched again
    assert _leftovers(tmp_path) == [] and weights_lock.recorded(path).size == len(content)


def test_a_second_downloader_of_the_same_file_is_refused(fake_hub: FakeHub, tmp_path: Path) -> None:
    content = os.urandom(10_000)
    _serve(fake_hub, content)
    expected = download.expected_for(_entry())
    part = download.partial_path(_final(tmp_path), expected)
    part.parent.mkdir(parents=True)
    with download._exclusive(part):
        with pytest.raises(WeightsMissingError, match="another process is downloading switch-eps.safetensors"):
            w.fetch(_entry(), tmp_path)
    assert w.fetch(_entry(), tmp_path).read_bytes() == content


def test_http_errors_are_named(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve(fake_hub, b"x", mode="missing")
    with pytest.raises(WeightsMissingError, match="could not read the file's metadata .*404"):
        w.fetch(_entry(), tmp_path)
    assert _leftovers(tmp_path) == []


def test_direct_url_files_are_resumable_and_prefix_checked(fake_hub: FakeHub, tmp_path: Path) -> None:
    payload = os.urandom(20_000)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    entry = {**w.manifest_entry("fid-inception"), "url": f"{fake_hub.url}/direct/resolve/main/inception.pth",
             "sha256_prefix": prefix}
    fake_hub.add("direct", "inception.pth", payload, mode="truncate-once")
    path = w.fetch(entry, tmp_path)
    assert path.read_bytes() == payload and fake_hub.gets("inception.pth") == [None, "bytes=10000-"]
    assert weights_lock.recorded(path).source == "first download (no published digest)"
    bad = {**entry, "sha256_prefix": "00000000"}
    with pytest.raises(WeightsMissingError, match="does not start with 00000000"):
        w.fetch(bad, tmp_path / "other")


# ------------------------------------------------------------------------------------- lock file


def _downloaded(hub: FakeHub, models: Path, content: bytes) -> Path:
    _serve(hub, content)
    return w.fetch(_entry(), models)


def test_the_lock_file_catches_a_file_changed_after_download(fake_hub: FakeHub, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    path = _downloaded(fake_hub, tmp_path, os.urandom(30_000))
    with open(path, "ab") as f:
        f.write(b"appended by something else")
    monkeypatch.setenv("COLORIZE_NO_DOWNLOAD", "1")
    with pytest.raises(WeightsMissingError, match="downloading is disabled|COLORIZE_NO_DOWNLOAD"):
        w.resolve(NAME, tmp_path, download=True)
    err = capsys.readouterr().err
    assert f"{path} changed after it was verified on " in err and "(30,026 bytes, verified 30,000)" in err
    assert (path.parent / (path.name + ".rejected")).exists() and not path.exists()  # moved aside, not deleted
    monkeypatch.delenv("COLORIZE_NO_DOWNLOAD")
    assert w.resolve(NAME, tmp_path, download=True).stat().st_size == 30_000  # fetched again


def test_verify_catches_a_same_size_change_and_moves_the_file_aside(fake_hub: FakeHub, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    content = os.urandom(30_000)
    path = _downloaded(fake_hub, tmp_path, content)
    assert w.main_verify([NAME, "--models-dir", str(tmp_path)]) == 0
    assert f"{NAME}: OK {path}" in capsys.readouterr().out
    path.write_bytes(bytes([content[0] ^ 1]) + content[1:])  # one flipped bit, same size
    assert w.resolve(NAME, tmp_path) == path  # the cheap size check cannot see it
    assert w.main_verify(["--models-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {path} is damaged or not {NAME}'s file: sha256" in err and "moved aside" in err
    assert not path.exists() and path.with_name(path.name + ".rejected").exists()


def test_a_hand_placed_file_is_used_with_a_notice_and_verify_records_it(fake_hub: FakeHub, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    content = os.urandom(5_000)
    _serve(fake_hub, content)
    path = _final(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert w.resolve(NAME, tmp_path) == path
    assert w.resolve(NAME, tmp_path) == path
    notes = [line for line in capsys.readouterr().err.splitlines() if "has not been verified" in line]
    assert notes == [f"note: {path} was not downloaded by this pack and has not been verified; "
                     f"`python -m colorize verify {NAME}` checks it"]  # once, one line
    assert w.main_verify([NAME, "--models-dir", str(tmp_path)]) == 0  # against the Hub's metadata
    assert weights_lock.recorded(path).source == "the Hub's metadata"


def test_a_hand_placed_file_of_another_size_is_the_users_and_used_with_a_notice(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    entry = w.manifest_entry("clip-vit-h-14-vision")  # the manifest records its size
    path = tmp_path / entry["models_subdir"] / entry["filename"]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a converted file")
    assert w.resolve(entry["name"], tmp_path, download=False, accept_alternatives=False) == path
    assert (f"has 16 bytes, the released clip-vit-h-14-vision has {entry['size_bytes']:,}: used as it is (your own "
            "file?); delete it to download the released one") in capsys.readouterr().err
    assert path.read_bytes() == b"a converted file"


# ------------------------------------------------------------------------------------- clean


def test_download_clean_removes_partial_files_and_says_how_much(fake_hub: FakeHub, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    _serve(fake_hub, os.urandom(300_000), mode="stall", stall_after=120_000)
    with pytest.raises(WeightsMissingError):
        w.fetch(_entry(), tmp_path)
    legacy = tmp_path / "clip_vision" / ".open_clip_model.safetensors.abc123.download"
    legacy.mkdir(parents=True)
    (legacy / "open_clip_model.safetensors").write_bytes(bytes(30_000))
    (tmp_path / "colorizediffusion" / ".mult-eps-ft.safetensors.x1.part").write_bytes(bytes(50_000))
    assert w.main_download(["--clean", "--models-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "removed 3 partial download file(s), freed 0.2 MB"
    assert _leftovers(tmp_path) == [] and not list(tmp_path.rglob("*.download"))


def test_download_clean_reports_the_freed_bytes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    part = tmp_path / "colorizediffusion" / download.PARTIAL_DIR / "v2-full.safetensors.0123456789abcdef.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(bytes(300_000))
    assert w.main_download(["--clean", "--models-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "removed 1 partial download file(s), freed 0.3 MB"
    assert not part.parent.exists()
