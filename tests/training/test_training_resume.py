"""kill -9 and resume: a run killed between saves, during a save, with a corrupt image in its data, or whose newest
checkpoint is then truncated, resumes (``run.resume=auto``) to an export bit-identical to the export of an
uninterrupted run on the same data (every tensor bitwise, same metadata; the file bytes themselves may differ
because safetensors writes its metadata map in no fixed order), and its ``log.jsonl`` holds each step once.

The killed run is a real ``python -m training.train`` process that sends itself SIGKILL at a chosen point
(``train_until_killed.py``); the uninterrupted and the resumed runs train in this process (CPU, one thread; the
tiny model computes bitwise the same either way).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import make_trainer, train_until_killed

from colorize.config import TINY_MULT
from training.batches import BatchPlan
from training.logs import read_log, step_lines
from training.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY, BATCH, ITEMS = 6, 2, 2, 6  # 6 steps of 2 = two epochs of the 6 items

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from colorize.tiny import write_tiny_weights

    base = tmp_path_factory.mktemp("resume")
    files = write_tiny_weights(base / "models", TINY_MULT, seed=0)
    clean = make_synthetic_dataset(base / "clean", ITEMS, (72, 88), "folders", seed=4)
    corrupt = base / "corrupt"
    shutil.copytree(clean, corrupt)
    for index in corrupt_indices():
        name = f"{index:05d}.png"
        data = (clean / "color" / name).read_bytes()
        (corrupt / "color" / name).write_bytes(data[: len(data) // 3])  # a truncated PNG
    return {"ckpt": files["mult-eps-ft"], "clip": files["clip-vit-h-14"], "clean": clean, "corrupt": corrupt,
            "base": base}


def corrupt_indices() -> tuple[int, int]:
    """Two records: the first sample of step 1 (found before the step-2 checkpoint, so a run resumed there knows
    it) and the first sample of step 3 (found by the killed run after that checkpoint, found again on resume)."""
    plan = BatchPlan(ITEMS, BATCH, 1, 1, 0, ((64, 64),))
    return plan.micro_batch(0, 0, 0)[0].index, plan.micro_batch(2, 0, 0)[0].index


def run_config(assets: dict[str, Path], out: Path, data: str = "clean") -> dict[str, Any]:
    return {
        "stage": "stage1_noisy",
        "model": {"init": str(assets["ckpt"]), "clip": str(assets["clip"])},
        "data": {"root": str(assets[data])},
        "augment": {"buckets": [[64, 64]], "load_size": 80},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "run": {"out_dir": str(out), "max_steps": STEPS, "batch_size": BATCH, "precision": "fp32", "device": "cpu",
                "log_every": 1, "save_every": SAVE_EVERY, "keep_checkpoints": 2, "ema_decay": 0.9, "export": True},
    }


class Export:
    """An export's metadata and tensors; equal when the metadata is and every tensor is bitwise."""

    def __init__(self, path: Path) -> None:
        from safetensors.torch import load_file

        from colorize.atomic import safetensors_metadata

        self.metadata, self.tensors = safetensors_metadata(path), load_file(str(path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Export):
            return NotImplemented
        a, b = self.tensors, other.tensors
        return (self.metadata == other.metadata and a.keys() == b.keys()
                and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a))


def train_uninterrupted(cfg: dict[str, Any]) -> Export:
    result = make_trainer(cfg).train()
    assert result.step == STEPS and result.export is not None
    return Export(result.export)


def assert_each_step_once(out: Path) -> None:
    assert [r["step"] for r in step_lines(read_log(out))] == list(range(1, STEPS + 1))


def checkpoint_steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def reference(assets: dict[str, Path]) -> Export:
    """The export of the uninterrupted run on the clean data."""
    return train_uninterrupted(run_config(assets, assets["base"] / "reference"))


@pytest.fixture(scope="module")
def corrupt_reference(assets: dict[str, Path]) -> tuple[Export, list[dict[str, Any]]]:
    """The export and log of the uninterrupted run on the data with two corrupt colour images."""
    out = assets["base"] / "corrupt-reference"
    return train_uninterrupted(run_config(assets, out, "corrupt")), read_log(out)


# ------------------------------------------------------------------------------------------ kill -9, resume
def test_killed_between_saves_resumes_to_the_same_export(assets: dict[str, Path], reference: Export,
                                                         tmp_path: Path) -> None:
    cfg = run_config(assets, tmp_path / "run")
    train_until_killed(cfg, "after-step:5")
    assert [r["step"] for r in step_lines(read_log(tmp_path / "run"))] == [1, 2, 3, 4, 5]
    resumed = make_trainer(cfg)
    assert resumed.step == 4
    assert Export(resumed.train().export) == reference
    assert_each_step_once(tmp_path / "run")
    assert [r["step"] for r in read_log(tmp_path / "run") if r.get("event") == "resumed"] == [4]


def test_killed_during_a_save_resumes_from_the_save_before(assets: dict[str, Path], reference: Export,
                                                           tmp_path: Path) -> None:
    cfg = run_config(assets, tmp_path / "run")
    train_until_killed(cfg, "during-save:4")
    folder = tmp_path / "run" / "checkpoints"
    partial = [p.name for p in folder.iterdir() if p.name.endswith(".part")]
    assert len(partial) == 1 and partial[0].startswith(".step_00000004.pt.")  # the half-written file of step 4
    assert checkpoint_steps(tmp_path / "run") == [partial[0], "step_00000002.pt"]
    resumed = make_trainer(cfg)
    assert resumed.step == 2
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]  # removed at resume
    assert Export(resumed.train().export) == reference
    assert_each_step_once(tmp_path / "run")
    assert checkpoint_steps(tmp_path / "run") == ["step_00000004.pt", "step_00000006.pt"]


def test_killed_with_a_corrupt_image_resumes_to_the_same_export(
    assets: dict[str, Path], corrupt_reference: tuple[Export, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The uninterrupted run skips the two corrupt images too; the resumed run knows the first from the
    checkpoint (and never reads it again) and finds the second again, logging it once."""
    export, reference_log = corrupt_reference
    first, second = (f"{i:05d}.png" for i in corrupt_indices())
    expected_events = [(1, first), (3, second)]
    assert [(r["step"], r["key"]) for r in reference_log if r.get("event") == "skipped_sample"] == expected_events
    assert [r["skipped_samples"] for r in step_lines(reference_log)] == [1, 1, 2, 2, 2, 2]

    cfg = run_config(assets, tmp_path / "run", "corrupt")
    proc = train_until_killed(cfg, "after-step:3")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipping unreadable")]
    assert len(warnings) == 2 and str(assets["corrupt"] / "color" / first) in warnings[0]
    assert "image file is truncated" in warnings[0] or "OSError" in warnings[0]
    resumed = make_trainer(cfg)
    assert resumed.step == 2 and list(resumed.ledger.known) == [first]
    opened: list[str] = []
    open_file = resumed.source.open
    resumed.source.open = lambda ref: (opened.append(Path(ref).name), open_file(ref))[1]  # type: ignore[method-assign]
    assert Export(resumed.train().export) == export
    assert opened.count(first) == 0 and opened.count(second) == 1  # known ones are passed over unread
    log = read_log(tmp_path / "run")
    assert_each_step_once(tmp_path / "run")
    assert [(r["step"], r["key"]) for r in log if r.get("event") == "skipped_sample"] == expected_events
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert [b["key"] for b in state["bad_samples"]] == [first, second]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(
    assets: dict[str, Path], reference: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = run_config(assets, tmp_path / "run")
    train_until_killed(cfg, "after-step:5")
    newest = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    resumed = make_trainer(cfg)
    assert resumed.step == 2
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "step_00000004.pt" in warning[0] and "step_00000002.pt" in warning[0]
    assert Export(resumed.train().export) == reference
    assert_each_step_once(tmp_path / "run")
    assert checkpoint_steps(tmp_path / "run") == ["step_00000004.pt", "step_00000006.pt"]  # 4 rewritten, readable
    assert torch.load(newest, weights_only=True)["step"] == 4
