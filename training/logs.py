"""Loss logging (JSON lines + console) and sample previews (sketch | reference | target | colorized).

``log.jsonl`` holds two kinds of lines: *step lines* (``{"step": N, "loss": ..., "skipped_samples": K, ...}``,
every ``run.log_every`` steps) and *event lines*, which carry an ``"event"`` name and the step they belong to
(``"resumed"``, ``"skipped_sample"``). When a run starts at step ``S`` (resumed, or 0), the lines of steps
``> S`` — written by a run that was stopped after its last checkpoint — are dropped first (the file is rewritten
atomically; lines without a step and a half-written last line are kept / dropped respectively), so that each
step appears once however often the run was killed and resumed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.atomic import atomic_path
from colorize.families import UNetInputs
from colorize.families.base import reference_tokens
from colorize.generate import make_conditioning, sample_latent, sketch_hints
from colorize.preprocess import tensor_to_pil
from colorize.sampling.noise_schedule import DiscreteSchedule
from colorize.settings import GenerationSettings
from training.model import TrainModules


class MetricLog:
    """Appends one JSON object per line to ``out_dir/log.jsonl`` and prints a short line (main process only)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.path = Path(out_dir) / "log.jsonl"
        self.enabled = enabled
        self.start = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def rewind(self, step: int) -> int:
        """Keep only the lines of steps ``<= step`` (and lines without a step); returns how many were dropped."""
        if not self.enabled or not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if _keep_line(line, step)]
        if len(kept) == len(lines):
            return 0
        with atomic_path(self.path, overwrite=True) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
        return len(lines) - len(kept)

    def event(self, name: str, step: int, echo: bool = True, **fields: Any) -> None:
        """An event line: ``{"event": name, "step": step, ...}``."""
        self.write({"event": name, "step": step, **fields}, echo=echo)

    def write(self, record: dict[str, Any], echo: bool = True) -> None:
        if not self.enabled:
            return
        record = {**record, "elapsed_s": round(time.time() - self.start, 3)}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if not echo:
            return
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        print(shown, flush=True)


def _keep_line(line: str, step: int) -> bool:
    """Whether a ``log.jsonl`` line survives a rewind to ``step`` (unparsable ones, e.g. cut by a kill, do not)."""
    if not line.strip():
        return False
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] <= step


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """All lines of ``out_dir/log.jsonl`` (step lines and event lines)."""
    path = Path(out_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def step_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step lines of :func:`read_log` (event lines left out)."""
    return [r for r in records if "event" not in r]


def render_samples(mods: TrainModules, batch: dict[str, Tensor], steps: int, seed: int) -> Tensor:
    """Colorize ``batch`` (sketch/reference/color in [-1, 1]) with the current weights; returns a grid image
    (1, 3, n·h, 4·w) in [-1, 1]: sketch (black lines), reference, target, result."""
    den = mods.denoiser
    was_training = den.training
    den.eval()
    try:
        dev = next(den.parameters()).device
        sketch, color = batch["sketch"].to(dev), batch["color"].to(dev)
        own = getattr(den, "preview_encoder", None)  # a family whose context needs its own modules (XL's proj)
        encode: Any = (lambda image: own(mods.clip, image)) if own is not None else \
            (lambda image: reference_tokens(mods.clip, image))
        tokens = encode(batch["reference"].to(dev))
        hints, hints_uncond = sketch_hints(den.sketch_encoder, sketch)
        context, processor, kwargs = den.preview_inputs(  # type: ignore[operator]
            tokens, batch, encode, mods.config.vae.downsample_factor)
        cond = make_conditioning(UNetInputs(context, processor, kwargs), hints, hints_uncond, torch.float32)
        size = tuple(sketch.shape[-2:])
        settings = GenerationSettings(steps=steps, seed=seed)
        z = sample_latent(den.unet, DiscreteSchedule.from_config(mods.config.schedule), mods.config, cond, size, settings)
        out = mods.vae.decode(z.float() / mods.config.vae.scale_factor).clamp(-1, 1)
    finally:
        den.train(was_training)
    ref = F.interpolate(batch["reference"].to(dev), size=size, mode="bilinear", align_corners=False)
    rows = torch.cat([-sketch, ref, color, out], dim=-1)
    return torch.cat(list(rows), dim=-2)[None].cpu()


def save_samples(path: str | Path, grid: Tensor) -> Path:
    with atomic_path(path, overwrite=True) as tmp:
        tensor_to_pil(grid)[0].save(tmp, format="PNG")
    return Path(path)
