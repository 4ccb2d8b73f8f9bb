"""``python -m training.train --config CONFIG.json [--set section.field=value ...]``

One process per device; several GPUs or nodes through ``torchrun``, e.g.
``torchrun --nproc_per_node 8 -m training.train --config training/configs/stage1_noisy.json``.
``--print-config`` shows the resolved config (stage defaults + file + overrides) and exits.

A mistake the user can fix (a config key or type, the data folder, no readable checkpoint, too many unreadable
samples) prints one ``error: ...`` line and exits with code 2, no traceback.
"""
from __future__ import annotations

import argparse
import sys

from training.config import load_config
from training.errors import TrainingError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description="Train a ColorizeDiffusion model (or the chapter-4 GAN).")
    ap.add_argument("--config", required=True, help="a .json config (or a .py file defining CONFIG)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field, e.g. --set run.max_steps=100 (value parsed as JSON when possible)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (NotImplementedError, ValueError, FileNotFoundError) as e:
        return _fail(e)
    if args.print_config:
        print(cfg.to_json())
        return 0
    try:
        return _train(cfg)
    except TrainingError as e:
        return _fail(e)


def _fail(e: BaseException) -> int:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2


def trainer_class(stage: str) -> type:
    """The loop of a stage: the chapter-4 GAN's for ``version="gan"`` stages, the diffusion one otherwise."""
    from training.stages import get_stage

    if get_stage(stage).version == "gan":
        from training.gan.trainer import GANTrainer

        return GANTrainer
    from training.engine import Trainer

    return Trainer


def _train(cfg) -> int:  # type: ignore[no-untyped-def]
    """Run ``cfg`` to the end (or until a :class:`TrainingError`); 0 when done."""
    from training.distributed import shutdown

    trainer = trainer_class(cfg.stage)(cfg)
    try:
        result = trainer.train()
        if trainer.dist.is_main:
            print(f"done: step {result.step}; checkpoint {result.checkpoint}; export {result.export}", flush=True)
    finally:
        shutdown(trainer.dist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
