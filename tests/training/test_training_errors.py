"""What training names in one line instead of a traceback: ``--set`` and config-file type errors, data-folder
mistakes (both raised before any model is built; the CLI prints ``error: ...`` and exits with 2), unreadable
samples (skipped, replaced by the next readable one, reported from data-loader workers, fatal past the limit),
unreadable checkpoints (the previous one is used), and ``log.jsonl`` rewound to the step a run starts from."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from training.bad_samples import FAILED_KEY, REPORT_KEY, allowance
from training.batches import BatchPlan, ItemSpec, PlanSampler, TripletDataset, collate
from training.checkpoint import (
    REQUIRED_KEYS,
    load_training_state,
    newest_readable_state,
    prune_checkpoints,
    save_training_state,
)
from training.config import AugmentConfig, DataConfig, ObjectiveConfig, config_from_dict, parse_override
from training.data import open_source
from training.errors import TrainingCheckpointError, TrainingConfigError, TrainingDataError
from training.logs import MetricLog, read_log
from training.objective import NoiseSpec
from training.synthetic import make_synthetic_dataset
from training.train import main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "training" / "configs" / "tiny_smoke.json")
AUGMENT = AugmentConfig(buckets=((64, 64),), load_size=80, reference_size=32)
NOISE = NoiseSpec(4, 8, 4, 4)

pytestmark = pytest.mark.usefixtures("single_thread")


def one_error_line(err: str) -> str:
    """The only stderr line, which must be an ``error: ...`` line (no traceback)."""
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write_config(tmp_path: Path, **sections: dict[str, Any]) -> str:
    cfg: dict[str, Any] = {"stage": "stage1_noisy", "augment": {"buckets": [[64, 64]], "load_size": 80},
                           "run": {"out_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2,
                                   "precision": "fp32", "device": "cpu", "save_every": 0, "export": False}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a model fails the test: the errors under test must come before."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built before the error")

    monkeypatch.setattr("training.engine.build_modules", refuse)


def corrupt(path: Path, how: str = "truncate") -> Path:
    """Damage an image file: cut it to a third ("truncate") or replace it with random bytes ("garbage")."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncate" else os.urandom(400))
    return path


# ------------------------------------------------------------------------------------------ --set and config
@pytest.mark.parametrize("override, words", [
    ("train.lr=abc", ["unknown config key 'train.lr'", "did you mean optim.lr"]),
    ("optim.lr=abc", ["optim.lr must be a number, got 'abc'", "e.g. --set optim.lr=1e-05"]),
    ("run.max_steps=1.5", ["run.max_steps must be an integer", "e.g. --set run.max_steps=1000"]),
    ("run=5", ["run is a section, not a value", "e.g. --set run."]),
    ("run.max_steps.x=1", ["run.max_steps is a value, not a section"]),
    ("run.precision=fp64", ["run.precision must be one of", "e.g. --set run.precision=auto"]),
    ("optim.betas=0.9", ["optim.betas must be a list of 2 numbers", "e.g. --set optim.betas='[0.9, 0.999]'"]),
    ("run.export=1", ["run.export must be true or false"]),
    ("run.max_steps", ["section.field=value"]),
])
def test_set_errors_are_one_line_naming_key_type_and_example(override: str, words: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", TINY, "--set", override]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --set {override}") and all(w in line for w in words), line


def test_set_values_that_fit_their_type_are_converted() -> None:
    cfg = config_from_dict({}, ["run.max_steps=1e3", "optim.lr=1", "run.device=0", "model.init=null",
                                "augment.buckets=[[64,64]]", "run.out_dir=runs/a b"])
    assert cfg.run.max_steps == 1000 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.run.device == "0" and cfg.model.init is None and cfg.augment.buckets == ((64, 64),)
    assert cfg.run.out_dir == "runs/a b"
    assert parse_override("stage=stage2_finetune") == {"stage": "stage2_finetune"}


def test_config_file_type_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TrainingConfigError, match=r"config key optim.lr must be a number, got \"abc\"; e.g. \"lr\""):
        config_from_dict({"optim": {"lr": "abc"}})
    with pytest.raises(TrainingConfigError, match="config key run is a section"):
        config_from_dict({"run": 5})
    with pytest.raises(TrainingConfigError, match="augment.buckets must be a list of lists of 2 integers"):
        config_from_dict({"augment": {"buckets": [[64]]}})
    with pytest.raises(TrainingConfigError, match="data.max_bad_fraction must be in"):
        config_from_dict({"data": {"max_bad_fraction": 2}})
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\"run\": ")
    for path, words in ((tmp_path / "missing.json", "does not exist"), (bad_json, "is not valid JSON")):
        assert main(["--config", str(path)]) == 2
        assert words in one_error_line(capsys.readouterr().err)


def test_cli_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    """The real command: a --set type error and a data folder that is a file."""
    (tmp_path / "file.png").write_bytes(b"not a folder")
    config = write_config(tmp_path, data={"root": str(tmp_path / "file.png")})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    for extra, words in ((["--set", "optim.lr=abc"], "optim.lr must be a number"), ([], "is a file, not a folder")):
        proc = subprocess.run([sys.executable, "-m", "training.train", "--config", config, *extra], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, proc.stderr
        assert words in one_error_line(proc.stderr) and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ data folders
def data_folder(tmp_path: Path, case: str) -> Path:
    """A data folder with one mistake."""
    root = tmp_path / "data"
    if case == "missing":
        return root
    if case == "a file":
        root.write_bytes(b"PK")
        return root
    root.mkdir()
    if case == "empty folder":
        return root
    make_synthetic_dataset(root, 3, (64, 64), "folders", image_list=False)
    if case == "no sketch folder":
        shutil.rmtree(root / "sketch")
    elif case == "no color folder":
        shutil.rmtree(root / "color")
    elif case == "no colour images":
        for p in (root / "color").iterdir():
            p.unlink()
    elif case == "mismatched names":
        for p in (root / "sketch").iterdir():
            p.rename(p.with_name("s" + p.name))
    elif case == "zip shards without sketch shards":
        shutil.rmtree(root)
        make_synthetic_dataset(root, 3, (64, 64), "zip", image_list=False)
        (root / "sketch" / "0000.zip").rename(root / "sketch" / "0009.zip")
    elif case == "a broken zip shard":
        shutil.rmtree(root)
        make_synthetic_dataset(root, 3, (64, 64), "zip", image_list=False)
        (root / "sketch" / "0000.zip").write_bytes(b"not a zip")
    return root


@pytest.mark.parametrize("case, words", [
    ("missing", "does not exist; point data.root at a dataset folder"),
    ("a file", "is a file, not a folder"),
    ("empty folder", "has no color/ folder; a dataset folder holds color/ and sketch/"),
    ("no color folder", "has no color/ folder"),
    ("no sketch folder", "has no sketch/ folder"),
    ("no colour images", "holds no images"),
    ("mismatched names", "has a sketch of the same name"),
    ("zip shards without sketch shards", "has a shard of the same name"),
    ("a broken zip shard", "is not a readable zip file"),
])
def test_data_folder_mistakes_are_one_line_errors_before_any_model(
    tmp_path: Path, case: str, words: str, no_models: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = data_folder(tmp_path, case)
    with pytest.raises(TrainingDataError, match=words):
        open_source(DataConfig(root=str(root)))
    assert main(["--config", write_config(tmp_path, data={"root": str(root)})]) == 2
    assert words in one_error_line(capsys.readouterr().err)


def test_colour_images_without_a_sketch_are_left_out_with_a_warning(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = make_synthetic_dataset(tmp_path, 4, (64, 64), "folders")
    (root / "sketch" / "00001.png").unlink()
    assert [r.name for r in open_source(DataConfig(root=str(root))).records] == ["00000.png", "00002.png",
                                                                               "00003.png"]
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: 1 of 4 colour images") and "color/00001.png" in warning


# ------------------------------------------------------------------------------------------ unreadable samples
def dataset(root: Path, **kw: Any) -> TripletDataset:
    return TripletDataset(open_source(DataConfig(root=str(root))), AUGMENT, ObjectiveConfig(), NOISE, seed=1, **kw)


def same_sample(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = set(a) - {REPORT_KEY}
    return keys == set(b) - {REPORT_KEY} and all(torch.equal(a[k], b[k]) for k in keys)


def test_an_unreadable_sample_is_replaced_by_the_next_readable_one(tmp_path: Path) -> None:
    clean = make_synthetic_dataset(tmp_path / "clean", 6, (72, 88), "folders", seed=2)
    root = tmp_path / "bad"
    shutil.copytree(clean, root)
    corrupt(root / "color" / "00002.png", "garbage")
    corrupt(root / "sketch" / "00003.png")
    corrupt(root / "color" / "00005.png")
    good, bad = dataset(clean), dataset(root)
    spec = ItemSpec(2, 7, 1, (64, 64))
    sample = bad[spec]
    # the next readable record (4) with the item's own augmentation and noise: the clean sample of record 4 there
    assert same_sample(sample, good[ItemSpec(4, 7, 1, (64, 64))]) and int(sample["index"]) == 4
    reports = sample[REPORT_KEY]
    assert [(b.key, Path(b.file).relative_to(root).as_posix()) for b in reports] == [
        ("00002.png", "color/00002.png"), ("00003.png", "sketch/00003.png")]
    assert reports[0].reason.startswith("UnidentifiedImageError") and "truncated" in reports[1].reason
    assert same_sample(bad[ItemSpec(5, 7, 1, (64, 64))], good[ItemSpec(0, 7, 1, (64, 64))])  # wraps around
    # known from before (a checkpoint): the same sample, the bad files not read again, still reported
    known = dataset(root)
    known.mark_bad(list(reports))
    opened: list[Path] = []
    open_file = known.source.open
    known.source.open = lambda ref: (opened.append(Path(ref)), open_file(ref))[1]  # type: ignore[method-assign]
    again = known[spec]
    assert same_sample(again, sample) and again[REPORT_KEY] == reports
    assert {p.name for p in opened} == {"00004.png"}


def test_zip_reports_name_the_shard_and_the_member(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, 4, (72, 88), "zip", shard_size=4)
    shard = root / "color" / "0000.zip"
    with zipfile.ZipFile(shard) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["00001.png"] = members["00001.png"][:200]
    with zipfile.ZipFile(shard, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    sample = dataset(root)[ItemSpec(1, 0, 0, (64, 64))]
    (report,) = sample[REPORT_KEY]
    assert report.key == "0000.zip:00001.png" and report.file == f"{shard} member 00001.png"
    assert "0x" not in report.reason and int(sample["index"]) == 2


def test_loader_workers_report_unreadable_samples_with_their_batch(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    root = make_synthetic_dataset(tmp_path, 6, (72, 88), "folders", seed=3)
    corrupt(root / "color" / "00001.png")
    ds = dataset(root)
    plan = BatchPlan(len(ds), 3, 1, 1, 2, ((64, 64),))
    runs = [list(DataLoader(ds, batch_sampler=PlanSampler(plan, 0, 0, 4), collate_fn=collate, num_workers=w))
            for w in (0, 2)]
    for a, b in zip(*runs):
        assert same_sample(a, b) and a.get(REPORT_KEY, []) == b.get(REPORT_KEY, [])
    reported = [bad.key for batch in runs[1] for bad in batch.get(REPORT_KEY, [])]
    assert set(reported) == {"00001.png"} and len(reported) == 2  # once per epoch (two epochs of 6)


def test_the_limit_of_unreadable_samples() -> None:
    assert allowance(10_000, 0.01, 3) == 100 and allowance(100, 0.01, 3) == 3
    assert allowance(2, 0.01, 3) == 1 and allowance(50, 0.0, 0) == 0


def test_all_samples_unreadable_gives_up_with_every_report(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, 3, (64, 64), "folders")
    for p in (root / "color").iterdir():
        corrupt(p)
    item = dataset(root)[ItemSpec(1, 0, 0, (64, 64))]
    assert item[FAILED_KEY] and [b.key for b in item[REPORT_KEY]] == ["00001.png", "00002.png", "00000.png"]
    batch = collate([item, item])
    assert batch[FAILED_KEY] and set(batch) == {REPORT_KEY, FAILED_KEY}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from colorize.config import TINY_MULT
    from colorize.tiny import write_tiny_weights

    files = write_tiny_weights(tmp_path_factory.mktemp("errors") / "models", TINY_MULT, seed=0)
    return {"init": str(files["mult-eps-ft"]), "clip": str(files["clip-vit-h-14"])}


def test_too_many_unreadable_samples_stop_the_run_naming_them(tmp_path: Path, tiny_models: dict[str, str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = make_synthetic_dataset(tmp_path / "data", 6, (72, 88), "folders", seed=2)
    for name in ("00000.png", "00001.png", "00002.png", "00003.png"):
        corrupt(root / "color" / name)
    config = write_config(tmp_path, model=tiny_models, data={"root": str(root), "min_bad_allowance": 2},
                          run={"max_steps": 6})
    assert main(["--config", config]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "3 of 6 samples cannot be read, more than the 2 allowed (data.max_bad_fraction=0.01, " \
           "data.min_bad_allowance=2)" in line
    assert sum(f"color/0000{i}.png (" in line for i in range(4)) == 3  # the first three found, with reasons
    assert "replace or remove these files, or raise data.max_bad_fraction" in line


def test_bad_samples_are_logged_once_and_checkpointed(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    """Found in a data-loader worker process, reported to the trainer with the batch."""
    from _helpers import make_trainer

    root = make_synthetic_dataset(tmp_path / "data", 4, (72, 88), "folders", seed=2)
    corrupt(root / "sketch" / "00002.png")
    cfg = json.loads(Path(write_config(tmp_path, model=tiny_models, data={"root": str(root), "num_workers": 2},
                                       run={"max_steps": 4, "log_every": 1})).read_text())
    result = make_trainer(cfg).train()
    log = read_log(tmp_path / "run")
    events = [r for r in log if r.get("event") == "skipped_sample"]
    assert len(events) == 1 and events[0]["key"] == "00002.png" and events[0]["file"].endswith("sketch/00002.png")
    first = events[0]["step"]
    assert [r["skipped_samples"] for r in log if "event" not in r] == [int(s >= first) for s in range(1, 5)]
    state = torch.load(result.checkpoint, weights_only=True)
    assert [b["key"] for b in state["bad_samples"]] == ["00002.png"]


# ------------------------------------------------------------------------------------------ checkpoints
def tiny_state(step: int) -> dict[str, Any]:
    return {**{k: {} for k in REQUIRED_KEYS}, "step": step, "colorize_config": "{}"}


def test_unreadable_newest_checkpoints_fall_back_with_a_warning(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_training_state(tiny_state(step), folder / f"step_{step:08d}.pt")
    (folder / "step_00000006.pt").write_bytes(os.urandom(3000))
    four = folder / "step_00000004.pt"
    four.write_bytes(four.read_bytes()[:-200])
    path, state = newest_readable_state(tmp_path)
    assert path.name == "step_00000002.pt" and state["step"] == 2
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: checkpoint ") and "step_00000002.pt" in w
                                      for w in warnings)
    assert "step_00000006.pt" in warnings[0] and "step_00000004.pt" in warnings[1]
    (folder / "step_00000002.pt").write_bytes(b"")
    with pytest.raises(TrainingCheckpointError) as e:
        newest_readable_state(tmp_path)
    assert "step_00000006.pt, step_00000004.pt, step_00000002.pt" in str(e.value)
    assert "delete them" in str(e.value) and "new run folder" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TrainingCheckpointError, match="step_00000006.pt cannot be read"):
        load_training_state(folder / "step_00000006.pt")
    assert newest_readable_state(tmp_path / "elsewhere") is None


def test_no_readable_checkpoint_is_a_one_line_error_before_any_model(
    tmp_path: Path, no_models: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_synthetic_dataset(tmp_path / "data", 3, (64, 64), "folders")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000002.pt").write_bytes(b"garbage")
    assert main(["--config", write_config(tmp_path, data={"root": str(data)})]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no checkpoint in" in line and "step_00000002.pt" in line and "delete them" in line
    missing = str(tmp_path / "nope.pt")
    assert main(["--config", write_config(tmp_path, data={"root": str(data)}, run={"resume": missing})]) == 2
    assert "run.resume file" in one_error_line(capsys.readouterr().err)


def test_pruning_leaves_checkpoints_newer_than_the_current_step(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        save_training_state(tiny_state(step), folder / f"step_{step:08d}.pt")
    prune_checkpoints(tmp_path, keep=1, upto=4)
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000004.pt", "step_00000006.pt", "step_00000008.pt"]


# ------------------------------------------------------------------------------------------ log
def test_rewinding_the_log_keeps_the_steps_up_to_the_resumed_one(tmp_path: Path) -> None:
    log = MetricLog(tmp_path)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step}, echo=False)
        log.event("skipped_sample", step, echo=False, key=f"{step}.png")
    log.write({"note": "no step"}, echo=False)
    with log.path.open("a") as f:
        f.write('{"step": 6, "lo')  # the half line of a killed run
    assert log.rewind(3) == 5
    assert [(r.get("event"), r.get("step")) for r in read_log(tmp_path)] == [
        (None, 1), ("skipped_sample", 1), (None, 2), ("skipped_sample", 2), (None, 3), ("skipped_sample", 3),
        (None, None)]
    assert log.rewind(3) == 0
