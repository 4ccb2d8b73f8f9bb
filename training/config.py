"""Training configuration as data: nested dataclasses, read from JSON (or a Python file), no YAML indirection.

A config names a *stage* (:mod:`training.stages`); the stage supplies defaults (which modules train, reference
noise and drop rates, ...) and the file overrides any field. ``--set section.field=value`` overrides on the
command line. Unknown keys are an error, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
import json
import runpy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

Precision = Literal["fp32", "bf16", "fp16", "auto"]

# Official mult training buckets (``configs/training`` of the official repository): 768² listed four times (weight 4), then six aspect buckets.
OFFICIAL_BUCKETS: tuple[tuple[int, int], ...] = (
    (768, 768), (768, 768), (768, 768), (768, 768),
    (704, 832), (832, 704), (896, 640), (640, 896), (960, 576), (576, 960),
)


@dataclass
class ModelConfig:
    """Where the weights come from. ``init``: a ColorizeDiffusion file (released, exported or tiny) or an SD2.1
    LDM checkpoint (U-Net + VAE; the sketch encoder then starts from its zero-initialised state, thesis §5.4).
    Without ``init`` the modules are random (``preset`` or an explicit ``colorize_config``)."""

    init: str | None = None
    clip: str | None = None
    preset: str = "full"
    colorize_config: dict[str, Any] | None = None
    init_seed: int = 0
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    """Triplet source: ``layout`` "folders" (``root/{color,sketch}/…`` with matching relative names) or "zip"
    (official shards ``root/{color,sketch,mask}/NNNN.zip`` with identical member names); "auto" picks by content.
    Filters use ``image_list*.json`` (official: name → {aesthetic_score, resolution, exist_sketch})."""

    root: str = ""
    layout: Literal["auto", "folders", "zip"] = "auto"
    image_list: str | None = None
    score_threshold: float | None = None
    min_resolution: int | None = None
    always_include: tuple[str, ...] = ()
    num_workers: int = 0


@dataclass
class AugmentConfig:
    """Thesis §3.2 and official loader (``data/dataloader.py``, ``data/preprocessing.py`` at commit ``c9bd9fb``); see ``training/augment.py`` for where they differ.

    ``load_size``: official short-edge range ``[max bucket side, load_size)`` (961 for the official buckets);
    ``None`` resizes by ``scale_range`` × the bucket's long side instead (thesis)."""

    buckets: tuple[tuple[int, int], ...] = OFFICIAL_BUCKETS
    load_size: int | None = 961
    scale_range: tuple[float, float] = (1.0, 1.3)
    flip_p: float = 0.0
    reference_flip_p: float = 0.0
    reference_size: int = 224
    border_mode: Literal["sides", "official", "none"] = "sides"
    border_max_frac: float = 0.15
    border_max_px: int = 150
    border_max_px_horizontal: int = 100
    invert_sketch: bool = True
    tps_p: float = 0.0
    tps_grid: int = 4
    tps_strength: float = 0.08
    color_jitter_p: float = 0.0
    color_jitter: float = 0.1


@dataclass
class ObjectiveConfig:
    """Diffusion objective (official ``refnet/models/trainer/trainer.py:64-108``; thesis Eq. 5.2 / 5.3)."""

    prediction: Literal["eps", "v"] = "eps"
    noisy_reference: bool = False
    noisy_t_switch: int = 900
    reference_drop: float = 0.5
    sketch_drop: float = 0.0
    offset_noise: float = 0.05
    snr_gamma: float = 0.0
    vae_sample: bool = True
    # v1.5/v2 stages (official DualMaskTrainer, refnet/models/trainer/mask.py:36-98): per-sample mask thresholds th_s, th_r ~ U[lo, hi]
    threshold_range: tuple[float, float] = (0.05, 0.95)
    # v2_style (thesis §5.6.1): per-sample probability that the background branch is active
    background_p: float = 0.5


@dataclass
class OptimConfig:
    """AdamW (thesis §5.4: lr 1e-5; torch default betas and weight decay, as the official trainer); optional
    linear warm-up then constant; gradient-norm clipping (the thesis names clipping without a value: 1.0 here)."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0


@dataclass
class RunConfig:
    """Loop, precision, checkpoints and logs. Global batch = ``batch_size`` × processes × ``grad_accum``."""

    out_dir: str = "runs/colorize"
    max_steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    precision: Precision = "auto"
    device: str = "auto"
    seed: int = 0
    ema_decay: float | None = None
    save_every: int = 1000
    keep_checkpoints: int = 3
    resume: str = "auto"
    log_every: int = 10
    sample_every: int = 0
    sample_count: int = 2
    sample_steps: int = 20
    export: bool = True
    export_ema: bool = True
    export_vae_fp16: bool = True
    find_unused_parameters: bool = False


@dataclass
class TrainConfig:
    """One training run: a stage name and its sections."""

    stage: str = "stage1_noisy"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------ building
def _tupleify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleify(v) for v in value)
    return value


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) in {where or 'top level'}: {unknown}; known: {sorted(known)}")
    kw = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name in known else None
        if is_dataclass(default) and isinstance(value, Mapping):
            kw[name] = _build(type(default), value, f"{where}.{name}".strip("."))
        elif name == "colorize_config":
            kw[name] = value
        else:
            kw[name] = _tupleify(value)
    return cls(**kw)


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "colorize_config":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"run.max_steps=10"`` → ``{"run": {"max_steps": 10}}`` (the value is JSON if it parses, else a string)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.field=value")
    path, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    keys = path.strip().split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def config_from_dict(data: Mapping[str, Any], overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Stage defaults, then ``data``, then ``overrides``; validated into a :class:`TrainConfig`."""
    from training.stages import get_stage

    merged: dict[str, Any] = dict(data)
    for o in overrides:
        merged = deep_merge(merged, parse_override(o))
    stage = get_stage(merged.get("stage", TrainConfig.stage))
    merged = deep_merge(stage.defaults, merged)
    merged["stage"] = stage.name
    cfg = _build(TrainConfig, merged, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Read a ``.json`` config, or a ``.py`` file defining ``CONFIG`` (a dict or a :class:`TrainConfig`)."""
    path = Path(path)
    if path.suffix == ".py":
        obj = runpy.run_path(str(path))["CONFIG"]
        data = obj.to_dict() if isinstance(obj, TrainConfig) else obj
    else:
        data = json.loads(path.read_text())
    return config_from_dict(data, overrides)


def validate(cfg: TrainConfig) -> None:
    """Reject values that would fail late or silently do the wrong thing."""
    o, r, a = cfg.objective, cfg.run, cfg.augment
    for name in ("reference_drop", "sketch_drop", "background_p"):
        if not 0.0 <= getattr(o, name) <= 1.0:
            raise ValueError(f"objective.{name} must be in [0, 1]")
    lo, hi = o.threshold_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError("objective.threshold_range must be [lo, hi] with 0 <= lo <= hi <= 1")
    if o.prediction not in ("eps", "v"):
        raise ValueError("objective.prediction must be 'eps' or 'v'")
    if r.precision not in ("fp32", "bf16", "fp16", "auto"):
        raise ValueError("run.precision must be fp32, bf16, fp16 or auto")
    if r.batch_size < 1 or r.grad_accum < 1 or r.max_steps < 0:
        raise ValueError("run.batch_size and run.grad_accum must be >= 1, run.max_steps >= 0")
    for h, w in a.buckets:
        if h % 64 or w % 64:
            raise ValueError(f"bucket {h}x{w} is not a multiple of 64 (the sketch encoder's stride)")
    biggest = max(max(b) for b in a.buckets)
    if a.load_size is not None and a.load_size <= biggest:
        raise ValueError(f"augment.load_size ({a.load_size}) must exceed the largest bucket side ({biggest}); "
                         "or set it to null to resize by augment.scale_range (thesis §3.2)")
    if not 0.0 <= a.border_max_frac < 0.5:
        raise ValueError("augment.border_max_frac must be in [0, 0.5)")
