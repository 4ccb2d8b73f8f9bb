"""Weights manifest, local lookup and the atomic, never-overwriting downloader (fake Hub on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from _helpers import closed_port

from colorize import weights as w
from colorize.errors import WeightsMissingError
from colorize.families import get_family

REPO = Path(__file__).resolve().parents[2]
RELEASED = {"mult-eps-ft.safetensors", "mult-eps-newft.safetensors", "switch-eps.safetensors", "v2-full.safetensors"}
#: ColorizeDiffusion XL: file names not confirmed (the entries carry a pattern the loader searches instead)
RELEASED_XL = {"sdxl.safetensors", "xlv2.safetensors"}


def _all_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


# --- manifest -------------------------------------------------------------------------------


def test_manifest_schema() -> None:
    entries = w.load_manifest()
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names)
    for e in entries:
        missing = [f for f in w.REQUIRED_FIELDS if f not in e]
        assert not missing, f"{e['name']} lacks {missing}"
        assert e["revision"] == "main"
        assert e["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", e["sha256"])
        assert e["size_bytes"] is None or (isinstance(e["size_bytes"], int) and e["size_bytes"] > 0)
        assert e["size_human"].endswith("GB")
        assert all(alt in names for alt in e.get("alternatives") or [])
        if e["repo_id"]:
            assert w.hub_url(e).startswith(f"https://huggingface.co/{e['repo_id']}/resolve/main/")
        else:  # not on the Hub: a direct https URL is required
            assert e.get("url", "").startswith("https://") and w.hub_url(e) == e["url"]
    ckpts = [e for e in entries if e["kind"] == "checkpoint"]
    assert {e["filename"] for e in ckpts} == RELEASED | RELEASED_XL
    for e in ckpts:
        xl = e["filename"] in RELEASED_XL
        assert e["licence"] == "CC-BY-NC-SA-4.0"
        assert e["repo_id"] == ("tellurion/ColorizeDiffusionXL" if xl else "tellurion/ColorizeDiffusion")
        assert e["models_subdir"] == "colorizediffusion"
        assert (e.get("file_pattern") == f"{e['version']}*.safetensors") == xl
        assert e["parameterization"] == get_family(e["version"]).parameterization
    for e in entries:
        if e["kind"].startswith("clip"):
            assert e["models_subdir"] == "clip_vision"
    assert w.manifest_entry(w.default_checkpoint_name())["kind"] == "checkpoint"
    assert w.manifest_entry(w.default_clip_name())["kind"] == "clip"
    assert w.manifest_entry("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")["repo_id"] == "h94/IP-Adapter"


def test_manifest_inside_package_is_the_root_file() -> None:
    """One source of truth: the packaged name is a symlink (wheels copy its content)."""
    root, packaged = REPO / "weights_manifest.json", REPO / "colorize" / "weights_manifest.json"
    assert packaged.is_symlink() and packaged.resolve() == root.resolve()


def test_default_models_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path / "m"))
    assert w.default_models_dir() == tmp_path / "m"
    monkeypatch.delenv(w.MODELS_DIR_ENV)
    assert w.default_models_dir().parts[-2:] == ("colorizediffusion", "models")


# --- resolve without network ----------------------------------------------------------------


def test_resolve_finds_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any) -> Any:
        raise AssertionError("must not download")

    monkeypatch.setattr(w.download, "download_verified", no_network)
    sub = tmp_path / "colorizediffusion" / "mult-eps-ft.safetensors"
    sub.parent.mkdir()
    sub.write_bytes(b"x")
    assert w.resolve("mult-eps-ft", tmp_path, download=True) == sub
    assert w.resolve("mult-eps-ft.safetensors", tmp_path) == sub
    flat = tmp_path / "v2-full.safetensors"
    flat.write_bytes(b"y")
    assert w.resolve("v2-full", tmp_path) == flat
    assert w.resolve(str(flat)) == flat  # explicit path
    renamed = tmp_path / "colorizediffusion" / "my-own.safetensors"
    renamed.write_bytes(b"z")
    assert w.resolve("my-own.safetensors", tmp_path) == renamed  # any file in the models folders
    with pytest.raises(WeightsMissingError, match="not a known weights name|neither an existing file"):
        w.resolve("no-such-model", tmp_path)
    with pytest.raises(WeightsMissingError, match="no such file"):
        w.resolve(str(tmp_path / "elsewhere" / "switch-eps.safetensors"), tmp_path)


def test_vision_only_clip_is_an_accepted_alternative(tmp_path: Path) -> None:
    alt = tmp_path / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    alt.parent.mkdir()
    alt.write_bytes(b"v")
    assert w.resolve(w.default_clip_name(), tmp_path) == alt
    with pytest.raises(WeightsMissingError):
        w.resolve(w.default_clip_name(), tmp_path, accept_alternatives=False)


def test_offline_message_and_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in w.OFFLINE_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(WeightsMissingError) as e:
        w.resolve("switch-eps", tmp_path, download=True)
    msg = str(e.value)
    final = tmp_path / "colorizediffusion" / "switch-eps.safetensors"
    assert "switch-eps.safetensors" in msg and str(final) in msg
    assert "tellurion/ColorizeDiffusion" in msg
    assert "https://huggingface.co/tellurion/ColorizeDiffusion/resolve/main/switch-eps.safetensors" in msg
    assert f"python -m colorize download switch-eps --models-dir {tmp_path}" in msg
    assert "ConnectionRefusedError" in msg and "CC-BY-NC-SA-4.0" in msg
    assert len(msg.splitlines()) <= 15
    assert _all_files(tmp_path) == []  # nothing under the final name, no temp leftovers
    with pytest.raises(WeightsMissingError, match="downloading is disabled"):
        w.resolve("switch-eps", tmp_path, download=False)


# --- downloads (fake Hub on 127.0.0.1; failures in tests/library/test_downloads.py) ---------------------------


def _serve(hub: Any, name: str, content: bytes) -> None:
    e = w.manifest_entry(name)
    hub.add(e["repo_id"], "/".join(p for p in (e.get("subfolder"), e["hub_filename"]) if p), content)


def test_download_is_atomic_and_reports_progress(tmp_path: Path, fake_hub: Any) -> None:
    content = b"weights" * 1000
    _serve(fake_hub, "mult-eps-newft", content)
    seen: list[tuple[int, int]] = []
    path = w.resolve("mult-eps-newft", tmp_path, download=True, progress=lambda n, t: seen.append((n, t)))
    assert path == tmp_path / "colorizediffusion" / "mult-eps-newft.safetensors"
    assert path.read_bytes() == content
    assert _all_files(tmp_path) == sorted([path, path.with_name("colorize-weights.lock.json")])
    assert fake_hub.gets("mult-eps-newft.safetensors") == [None]
    assert seen[-1] == (len(content), len(content))


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, fake_hub: Any) -> None:
    content = b"some bytes"
    _serve(fake_hub, "mult-eps-ft", content)
    entry = dict(w.manifest_entry("mult-eps-ft"), sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(WeightsMissingError, match="from the manifest; the bytes were discarded"):
        w.fetch(entry, tmp_path)
    assert _all_files(tmp_path) == []
    entry["sha256"] = hashlib.sha256(content).hexdigest()
    assert w.fetch(entry, tmp_path).read_bytes() == content
    # the real entry with a known size/sha256 rejects a wrong file too
    _serve(fake_hub, "clip-vit-h-14-vision", b"4 KB of garbage")
    with pytest.raises(WeightsMissingError, match="the manifest gives the file 2,528,373,448 bytes"):
        w.resolve("clip-vit-h-14-vision", tmp_path / "other", download=True)
    assert _all_files(tmp_path / "other") == []


def test_existing_file_is_never_overwritten(tmp_path: Path, fake_hub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "colorizediffusion" / "mult-eps-ft.safetensors"
    final.parent.mkdir()
    final.write_bytes(b"old")
    _serve(fake_hub, "mult-eps-ft", b"new")
    entry = w.manifest_entry("mult-eps-ft")
    assert w.fetch(entry, tmp_path) == final and final.read_bytes() == b"old"

    # a file that appears while the download runs (another process) is kept as well
    other = tmp_path / "b"
    target = other / "colorizediffusion" / "mult-eps-ft.safetensors"
    real_check = w.download.check_bytes

    def racing(path: Path, expected: Any) -> str:
        target.write_bytes(b"theirs")
        return real_check(path, expected)

    monkeypatch.setattr(w.download, "check_bytes", racing)
    assert w.fetch(entry, other) == target and target.read_bytes() == b"theirs"
    assert _all_files(other) == [target]  # and no lock entry: these bytes are not the ones verified


def test_main_download(tmp_path: Path, fake_hub: Any, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    assert w.main_download(["--list", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(e["name"] in out for e in w.load_manifest())
    _serve(fake_hub, "v2-full", b"ok")
    assert w.main_download(["v2-full", "--models-dir", str(tmp_path)]) == 0
    assert (tmp_path / "colorizediffusion" / "v2-full.safetensors").read_bytes() == b"ok"
    assert "(size and sha256 verified)" in capsys.readouterr().out
    assert w.main_download(["v2-full", "--models-dir", str(tmp_path)]) == 0
    assert "already present" in capsys.readouterr().out
    assert w.main_download(["nonsense", "--models-dir", str(tmp_path)]) == 2
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert w.main_download(["switch-eps", "--models-dir", str(tmp_path)]) == 2
    assert "python -m colorize download switch-eps" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("variable", ["COLORIZE_NO_DOWNLOAD", "HF_HUB_OFFLINE"])
def test_offline_variables_stop_a_download_before_the_hub_is_asked(
        variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(w.download, "download_verified", lambda *a: pytest.fail("the hub must not be asked"))
    with pytest.raises(WeightsMissingError, match=f"reason: +not on disk and {variable} is set"):
        w.resolve("switch-eps", tmp_path, download=True)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_an_unreachable_hub_fails_at_once_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in w.OFFLINE_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(w.download, "download_verified", lambda *a: pytest.fail("the hub must not be asked"))
    with pytest.raises(WeightsMissingError, match=r"reason: +no network: cannot reach 127\.0\.0\.1 \(Connection"):
        w.resolve("switch-eps", tmp_path, download=True)


def test_cli_offline_with_empty_model_folders_exits_quickly_with_the_named_error(tmp_path: Path) -> None:
    """``python -m colorize run`` on empty model folders with no network: the two missing-weights messages,
    no retry lines, and an exit within seconds (huggingface_hub's own retries took about a minute)."""
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in w.OFFLINE_ENVS}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"  # no network, whatever this machine has
    sketch, ref = REPO / "workflows" / "colorizediffusion_sketch.png", REPO / "workflows" / "colorizediffusion_reference.png"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "colorize", "run", "--sketch", str(sketch), "--reference", str(ref),
                           "--out", str(tmp_path / "out.png"), "--models-dir", str(tmp_path / "models")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    print(f"exit {proc.returncode} after {elapsed:.1f} s")
    assert proc.returncode != 0 and "weights file not found: mult-eps-ft.safetensors" in out, out
    assert "no network: cannot reach 127.0.0.1" in out
    assert not re.search(r"(?i)retry|retrying", out), out
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not (tmp_path / "out.png").exists()


def test_a_release_with_an_unconfirmed_name_is_found_by_its_pattern(tmp_path: Path) -> None:
    """The XL file names are not known here: any sdxl*/xlv2* file in models/colorizediffusion serves."""
    own = tmp_path / "colorizediffusion" / "sdxl_v1.0-eps.safetensors"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    assert w.resolve("sdxl", tmp_path) == own
    with pytest.raises(w.WeightsMissingError):
        w.resolve("xlv2", tmp_path)
