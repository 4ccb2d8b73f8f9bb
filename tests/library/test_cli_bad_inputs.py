"""The command line over a table of hostile or mistaken inputs: every case ends with exit 2, an ``error:`` line that
names the problem, no traceback, within seconds, and nothing written under a final name.

The cases run as real ``python -m colorize`` processes (two at a time) against tiny weights, with the Hub endpoint
pointed at a closed local port so that nothing reaches the network.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
from _helpers import closed_port
from safetensors.torch import save_file

from colorize.checkpoint import CONFIG_METADATA_KEY
from colorize.config import TINY_MULT
from colorize.tiny import build_tiny_state_dicts, write_tiny_weights

REPO = Path(__file__).resolve().parents[2]
#: Seconds a case may take (interpreter start, torch import, tiny weights): seconds, never minutes.
BOUND_S = 60


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after ``python -m colorize``; {tmp}, {models}, {sketch}, {ref}, {ckpt} are filled in
    message: str  # a fragment of the error line
    env: dict[str, str] = field(default_factory=dict)
    output: str | None = "{tmp}/out-{id}.png"  # the path that must not exist afterwards


def _run_case(sketch: str = "{sketch}", ref: str = "{ref}", out: str = "{tmp}/out-{id}.png",
              *extra: str) -> tuple[str, ...]:
    return ("run", "--sketch", sketch, "--reference", ref, "--out", out, "--models-dir", "{models}", *extra)


CASES = [
    # --- output path and format
    Case("out-is-a-folder", _run_case(out="{tmp}"), "is a folder", output=None),
    Case("out-unknown-extension", _run_case(out="{tmp}/out.gif"), "'.gif'", output="{tmp}/out.gif"),
    Case("out-unwritable", _run_case(out="/proc/colorize-out.png"), "/proc/colorize-out.png", output=None),
    # --- settings
    Case("negative-width", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--width", "-64"), "width must be"),
    Case("huge-side", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--width", "100000", "--height", "64"),
         "100000"),
    Case("huge-area", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--width", "100000", "--height",
                                "100000"), "100000"),
    Case("cfg-below-one", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--ref-cfg", "-3"),
         "reference_cfg must be at least 1"),
    Case("cfg-nan", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--ref-cfg", "nan"), "finite number"),
    Case("zero-steps", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--steps", "0"), "steps must be"),
    Case("unknown-sampler", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--sampler", "magic"),
         "unknown sampler 'magic'"),
    # --- images
    Case("sketch-missing", _run_case(sketch="{tmp}/nope.png"), "nope.png"),
    Case("sketch-is-a-folder", _run_case(sketch="{tmp}"), "folder"),
    Case("sketch-garbage", _run_case(sketch="{tmp}/garbage.png"), "garbage.png"),
    Case("sketch-truncated", _run_case(sketch="{tmp}/truncated.png"), "truncated.png"),
    Case("decompression-bomb", _run_case(sketch="{tmp}/bomb.png"), "bomb.png"),
    # --- weights files and folders
    Case("models-dir-is-a-file", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--models-dir",
                                           "{tmp}/garbage.png"), "is a file, not a folder"),
    Case("models-env-is-a-file", ("run", "--sketch", "{sketch}", "--reference", "{ref}", "--out",
                                  "{tmp}/out-{id}.png"), "is a file, not a folder",
         env={"COLORIZE_MODELS_DIR": "{tmp}/garbage.png"}),
    Case("checkpoint-missing", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                         "{tmp}/none.safetensors"), "no such file"),
    Case("checkpoint-is-a-folder", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                             "{models}/colorizediffusion/"), "a folder, not a weights file"),
    Case("checkpoint-truncated", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                           "{tmp}/truncated.safetensors"), "truncated"),
    Case("checkpoint-random-bytes-ckpt", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                                   "{tmp}/random.ckpt"), "random.ckpt: not a PyTorch checkpoint"),
    Case("checkpoint-code-pickle", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                             "{tmp}/evil.ckpt"), "refused to load"),
    Case("checkpoint-absurd-depth", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                              "{tmp}/deep.safetensors"), "unet.transformer_depth=100000"),
    Case("checkpoint-zero-head", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                           "{tmp}/zerohead.safetensors"), "num_head_channels=0"),
    Case("checkpoint-nested-header", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                               "{tmp}/nested.safetensors"), "nested too deeply"),
    Case("checkpoint-integer-weights", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--checkpoint",
                                                 "{tmp}/ints.safetensors"), "not floating point"),
    Case("clip-is-a-checkpoint", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--clip", "{ckpt}"),
         "CLIP"),
    Case("weights-offline", _run_case("{sketch}", "{ref}", "{tmp}/out-{id}.png", "--models-dir", "{tmp}/empty"),
         "weights file not found"),
    # --- other commands
    Case("inspect-gzip-bomb", ("inspect", "{tmp}/keys_bomb.json.gz"), "not a layout file", output=None),
    Case("inspect-nested-header", ("inspect", "{tmp}/nested.safetensors"), "nested too deeply", output=None),
    Case("inspect-integer-weights", ("inspect", "{tmp}/ints.safetensors"), "not floating point", output=None),
    Case("download-unknown-name", ("download", "no-such-model", "--models-dir", "{tmp}/dl"), "no-such-model",
         output="{tmp}/dl"),
    Case("download-offline", ("download", "switch-eps", "--models-dir", "{tmp}/dl"), "no network",
         output="{tmp}/dl/colorizediffusion/switch-eps.safetensors"),
    Case("verify-unknown-name", ("verify", "no-such-model", "--models-dir", "{tmp}/dl"), "no-such-model",
         output=None),
]


class _Evil:
    """Unpickling this would create a marker file; the loader must refuse before that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width``×``height`` (a decompression bomb needs no more to be refused)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _crafted_files(tmp: Path, models: Path) -> None:
    sd = build_tiny_state_dicts(TINY_MULT)[0]
    meta = lambda cfg: {CONFIG_METADATA_KEY: json.dumps(cfg.to_dict())}  # noqa: E731
    save_file(sd, str(tmp / "deep.safetensors"),
              metadata=meta(replace(TINY_MULT, unet=replace(TINY_MULT.unet, transformer_depth=100_000))))
    save_file(sd, str(tmp / "zerohead.safetensors"),
              metadata=meta(replace(TINY_MULT, unet=replace(TINY_MULT.unet, num_head_channels=0))))
    ints = {k: (v.to(torch.int32) if k.endswith("input_blocks.0.0.weight") else v) for k, v in sd.items()}
    save_file(ints, str(tmp / "ints.safetensors"), metadata=meta(TINY_MULT))
    header = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp / "nested.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    ckpt = next((models / "colorizediffusion").glob("mult*.safetensors")).read_bytes()
    (tmp / "truncated.safetensors").write_bytes(ckpt[: len(ckpt) // 2])
    (tmp / "random.ckpt").write_bytes(b"\x00" + os.urandom(4095))  # neither zip nor pickle
    with open(tmp / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": _Evil(tmp / "PWNED")}, f)
    (tmp / "garbage.png").write_bytes(os.urandom(2048))
    sketch = (REPO / "workflows" / "colorizediffusion_sketch.png").read_bytes()
    (tmp / "truncated.png").write_bytes(sketch[: len(sketch) // 3])
    _png_header_only(tmp / "bomb.png", 60_000, 60_000)
    (tmp / "keys_bomb.json.gz").write_bytes(gzip.compress(b'{"k": [' + b" " * (100 << 20) + b"1]}", 6))
    (tmp / "empty").mkdir()


def _fill(text: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, subprocess.CompletedProcess, float,
                                                                        dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("cli-bad-inputs")
    models = tmp / "models"
    write_tiny_weights(models)
    _crafted_files(tmp, models)
    base = {"tmp": str(tmp), "models": str(models), "sketch": str(REPO / "workflows" / "colorizediffusion_sketch.png"),
            "ref": str(REPO / "workflows" / "colorizediffusion_reference.png"),
            "ckpt": str(next((models / "colorizediffusion").glob("mult*.safetensors")))}
    env = {k: v for k, v in os.environ.items() if k not in ("COLORIZE_NO_DOWNLOAD", "HF_HUB_OFFLINE")}
    env.update({"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "COLORIZE_MODELS_DIR": str(models),
                "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})

    def run(case: Case) -> tuple[str, tuple]:
        places = {**base, "id": case.id}
        args = [_fill(a, places) for a in case.args]
        case_env = {**env, **{k: _fill(v, places) for k, v in case.env.items()}}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "colorize", *args], capture_output=True, text=True, cwd=REPO,
                              env=case_env, timeout=BOUND_S * 3, check=False)
        return case.id, (case, proc, time.monotonic() - t0, places)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_bad_input_is_a_named_error(results: dict, case: Case) -> None:
    _, proc, elapsed, places = results[case.id]
    err = proc.stderr
    assert "Traceback" not in err + proc.stdout, err
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err}"
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error_lines, err
    assert case.message in err, err
    assert elapsed < BOUND_S, f"{elapsed:.1f} s"
    if case.output is not None:
        assert not Path(_fill(case.output, places)).exists()


def test_the_code_pickle_never_ran(results: dict) -> None:
    _, _, _, places = results["checkpoint-code-pickle"]
    assert not (Path(places["tmp"]) / "PWNED").exists()
