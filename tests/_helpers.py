"""Small helpers shared by the model tests."""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch

#: The repository's root folder.
REPO = Path(__file__).resolve().parents[1]
#: The harness environment (built by the harness's ``setup_env.sh``, as ``.ci/run`` does): a ComfyUI 0.3.64
#: tree and its venv. The node tests import ComfyUI's ``comfy_api`` from that tree (``COMFYUI_DIR``).
COMFY_HOME = Path(os.environ.get("COMFY_HOME", Path.home() / ".cache" / "comfyui-harness"))
COMFY_DIR, COMFY_PY = COMFY_HOME / "ComfyUI", COMFY_HOME / "venv" / "bin" / "python"


def skip_or_fail(reason: str, module: bool = False) -> NoReturn:
    """Skip the test (or with ``module``, the whole test module) with the reason, or fail it under ``CI=true``:
    CI must never pass by skipping what it is there to run (fixtures, layouts, the real ComfyUI host, the
    browser)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure, not a skip)")
    pytest.skip(reason, allow_module_level=module)


def require_node_api() -> None:
    """Skip the calling test module (fail under ``CI=true``) when the nodes cannot import ComfyUI's
    ``comfy_api`` (no ComfyUI tree in ``COMFYUI_DIR``, nor the harness's)."""
    try:
        import nodes.schema  # noqa: F401
    except ImportError as e:
        skip_or_fail(str(e), module=True)


def combo_choices(node_cls: type, name: str) -> list:
    """The choices of a node's combo input, as its V3 schema lists them now (file pickers rescan the folders)."""
    return next(i.options for i in node_cls.define_schema().inputs if i.id == name)


def state_shapes(module: torch.nn.Module, prefix: str) -> dict[str, list[int]]:
    """``{prefix + key: shape}`` of a module's state dict (for comparisons with the official layouts)."""
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero random weights everywhere: the constructors zero-initialise residual outputs and LoRA ups
    (as the released models were before training), which would hide whole paths from a test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def cpu_run_config(stage: str, out: object, weights: dict, root: object, steps: int = 2, batch: int = 2,
                   augmentation: dict | None = None, learning_rate: float = 1e-3, **sections: dict) -> dict:
    """A tiny one-process CPU run config (``weights``: the model section; data from ``root``; fp32, a log line
    every step, nothing saved or exported unless asked; a 64² bucket unless ``augmentation`` says otherwise);
    ``sections`` update its sections (``model={...}`` adds to ``weights``)."""
    cfg: dict = {
        "stage": stage,
        "model": weights,
        "data": {"root": str(root)},
        "augment": augmentation or {"buckets": [[64, 64]]},
        "optim": {"lr": learning_rate},
        "run": {"out_dir": str(out), "max_steps": steps, "batch_size": batch, "precision": "fp32", "device": "cpu",
                "log_every": 1, "save_every": 0, "export": False, "resume": "none"},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def masked_stage_config(stage: str, init: object, clip: object, data: object, out: object, batch_size: int,
                        **sections: dict) -> dict:
    """A tiny CPU run config for the v1.5 / v2 stages (64² bucket, fp32, nothing written unless asked)."""
    cfg: dict = {
        "stage": stage,
        "model": {"init": str(init), "clip": str(clip)},
        "data": {"root": str(data)},
        "augment": {"buckets": [[64, 64]], "load_size": 80},
        "optim": {"lr": 1e-2},
        "run": {"out_dir": str(out), "max_steps": 2, "batch_size": batch_size, "precision": "fp32", "device": "cpu",
                "log_every": 0, "save_every": 0, "export": False, "resume": "none"},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def make_trainer(cfg: dict):  # type: ignore[no-untyped-def]
    """A :class:`training.engine.Trainer` for a config dict."""
    from training.config import config_from_dict
    from training.engine import Trainer

    return Trainer(config_from_dict(cfg))


def torchrun_training(cfg: dict, path: Path, processes: int = 2, timeout: int = 600) -> str:  # type: ignore[type-arg]
    """``torchrun --standalone --nproc_per_node N -m training.train`` of ``cfg`` (written to ``path``) on the CPU
    (gloo, one thread each); asserts it exits 0 and returns its stdout."""
    import json
    import subprocess
    import sys

    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "training.train", "--config", str(path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


class ProgressRecorder:
    """Stands in for ``nodes.host.Progress``: records ``(value, total)`` updates into ``updates``."""

    updates: list[tuple[int, int]] = []

    def __init__(self, total: int) -> None:
        self.total = total

    def update(self, value: int, total: int | None = None, preview: object = None) -> None:
        self.updates.append((value, total or self.total))

    @classmethod
    def fresh(cls) -> type["ProgressRecorder"]:
        """A subclass with its own empty ``updates`` list."""
        return type("Recorder", (cls,), {"updates": []})


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once (an unreachable endpoint)."""
    import socket

    with socket.socket() as s:  # bound, never listening
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kind_result(kind: str, folder: str = "official-xl") -> Any:
    """One parity kind run alone on its golden fixture ``../shared/fixtures/<folder>/<kind>.json`` (the runner's
    ``run_fixture`` imports every kind; a module's test checks its own); skipped (failed under CI) without it."""
    from colorize.parity.core import compare, load_fixture, produce

    path = REPO.parent / "shared" / "fixtures" / folder / f"{kind}.json"
    if not path.is_file():
        skip_or_fail(f"{path} not found (the golden fixtures)")
    module = importlib.import_module(f"colorize.parity.kinds.{kind}")
    fixture = load_fixture(path)
    return compare(fixture, produce(module.run, fixture))


def tiny_colorizer(directory: Path, version: str, **kw: Any) -> Any:
    """The :class:`~colorize.pipeline.Colorizer` of a family's tiny files in ``directory`` (written by
    ``write_tiny_weights``), with the reference-encoder file(s) that family reads."""
    from colorize.families import get_family
    from colorize.pipeline import Colorizer
    from colorize.tiny import CHECKPOINT_NAMES
    from colorize.weights import default_clip_name, manifest_entry

    def path(name: str) -> Path:
        e = manifest_entry(name)
        return directory / e["models_subdir"] / e["filename"]

    own = get_family(version).reference_files
    clip = path(own[0] if own else default_clip_name())
    tagger = path(own[1]) if own else None
    return Colorizer.from_files(directory / "colorizediffusion" / f"{CHECKPOINT_NAMES[version]}.safetensors", clip,
                                device="cpu", tagger=tagger, **kw)


def train_until_killed(cfg: dict, when: str,  # type: ignore[type-arg]
                       timeout: int = 600) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """The run of ``cfg`` in a subprocess that kills itself with SIGKILL at ``when`` (``after-step:N``, see
    ``tests/training/train_until_killed.py``); asserts that it was killed, and returns the process."""
    path = Path(cfg["run"]["out_dir"]).with_suffix(".json")
    path.write_text(json.dumps(cfg))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo)}
    driver = repo / "tests" / "training" / "train_until_killed.py"
    proc = subprocess.run([sys.executable, str(driver), str(path), when], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def comfy_image(path: Path) -> torch.Tensor:
    """A file as a ComfyUI IMAGE (1, H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def tiny_models_folder(tmp_path_factory: pytest.TempPathFactory, versions: tuple[str, ...] | None = None
                       ) -> Iterator[Path]:
    """A fresh models folder with the tiny weights of ``versions`` (default: v1 ``mult``), set as the models
    folder (``$COLORIZE_MODELS_DIR``) while the fixture that yields from this lives."""
    import colorize.weights as w
    from colorize.tiny import write_tiny_weights

    d = tmp_path_factory.mktemp("models")
    write_tiny_weights(d, **({"versions": versions} if versions else {}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(w.MODELS_DIR_ENV, str(d))
        yield d


@contextlib.contextmanager
def placed_copy(source: Path, target: Path) -> Iterator[Path]:
    """``source`` copied to ``target`` for the duration of the block (removed afterwards)."""
    shutil.copy(source, target)
    try:
        yield target
    finally:
        target.unlink(missing_ok=True)
