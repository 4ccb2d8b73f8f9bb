"""``python tests/training/train_until_killed.py CONFIG.json WHEN``: ``python -m training.train --config CONFIG``
that sends itself SIGKILL (kill -9: no cleanup, no atexit, no flush) at a chosen point, deterministically:

* ``after-step:N``  — right after the step line of step ``N`` is in ``log.jsonl`` (between two saves);
* ``during-save:N`` — halfway through writing the checkpoint of step ``N`` (half its bytes are in the
  temporary ``.part`` file, the final name does not exist yet).

The resume tests (``test_training_resume.py``) run it in a subprocess and then resume the run folder.
"""
from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any


def kill_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_step(step: int) -> None:
    from training.logs import MetricLog

    write = MetricLog.write

    def write_then_kill(self: MetricLog, record: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        write(self, record, *args, **kwargs)
        if record.get("step") == step and "event" not in record:
            kill_now()

    MetricLog.write = write_then_kill  # type: ignore[method-assign]


def kill_during_save(step: int) -> None:
    import torch

    save = torch.save

    def save_half_then_kill(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not (isinstance(obj, dict) and obj.get("step") == step):
            save(obj, f, *args, **kwargs)
            return
        buf = io.BytesIO()
        save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
        kill_now()

    torch.save = save_half_then_kill  # type: ignore[assignment]


def main(config: str, when: str) -> int:
    mode, _, step = when.partition(":")
    {"after-step": kill_after_step, "during-save": kill_during_save}[mode](int(step))
    from training.train import main as train_main

    return train_main(["--config", config])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
