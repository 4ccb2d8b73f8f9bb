"""Training configuration as data: nested dataclasses, read from JSON (or a Python file), no YAML indirection.

A config names a *stage* (:mod:`training.stages`); the stage supplies defaults (which modules train, reference
noise and drop rates, ...) and the file overrides any field. ``--set section.field=value`` overrides on the
command line. Unknown keys are an error, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import runpy
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from training.errors import TrainingConfigError

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
    # XL stages: the WD v1.4 SwinV2 tagger file (CLIP-bigG goes in ``clip``); both are frozen
    tagger: str | None = None
    # benchmarks only: random frozen XL reference encoders of the released sizes when no files are given
    random_reference_encoder: bool = False
    preset: str = "full"
    colorize_config: dict[str, Any] | None = None
    init_seed: int = 0
    gradient_checkpointing: bool = False
    # chapter-4 GAN stages (training.gan): GANConfig fields over the preset (``preset`` "full" = thesis Table 4.1,
    # "tiny" = CPU tests), and ManipulationConfig fields of the stage-2 tag mapper (e.g. hidden_widths)
    gan: dict[str, Any] | None = None
    manipulation: dict[str, Any] | None = None


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
    # unreadable samples (corrupt or truncated files) are skipped; the run stops once more than
    # max(min_bad_allowance, max_bad_fraction × dataset size) of them are known (see training.bad_samples)
    max_bad_fraction: float = 0.01
    min_bad_allowance: int = 3
    # stages that read tags (the GAN tagger): the tags file and its vocabulary (training.tags; default
    # root/tags.json and root/vocabulary.json, as `training.prepare --tags` and `training.synthetic --tags` write)
    tags: str | None = None
    vocabulary: str | None = None


@dataclass
class AugmentConfig:
    """Thesis §3.2 and official loader (``data/dataloader.py``, ``data/preprocessing.py`` at commit ``c9bd9fb``); see ``training/augment.py`` for where they differ.

    ``load_size``: official short-edge range ``[max bucket side, load_size)`` (961 for the official buckets);
    ``None`` resizes by ``scale_range`` × the bucket's long side instead (thesis)."""

    buckets: tuple[tuple[int, int], ...] = OFFICIAL_BUCKETS
    # batches of one orientation with the bucket that fits them (official XL AspectRatioSampler; see
    # training.batches.AspectBatchPlan) instead of one random bucket per step
    aspect_buckets: bool = False
    # "short_edge": short edge to load_size / scale_range (SD2.1 stages); "cover": the smallest resize that covers
    # the bucket (× scale_range), the official XL crop (short edge to the crop's matching side)
    resize_mode: Literal["short_edge", "cover"] = "short_edge"
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
    # XL stages (official refnet/models/trainer/sdxl.py at commit ec78784): per-hint drop rates of the sketch
    # encoder outputs (control_drop), the reference "inpainting" rate and the batch offset of the mask it borrows
    # (inpaint_p, merge_offset), the score for images the image list does not score (the official loader's
    # DEFAULT_AESTHETIC_SCORE)
    hint_drop: tuple[float, ...] = ()
    inpaint_p: float = 0.0
    inpaint_offset: int = 4
    default_score: float = 6.0
    # XL base stage Gram-matrix loss (official refnet/gram_hook.py): weight (0 = off), the 1-based transformer
    # blocks whose outputs it compares, when it starts (step, or epoch of the data; the first reached counts)
    # and the normalisation (token mean/std, channel L2)
    gram_weight: float = 0.0
    gram_blocks: tuple[int, ...] = (23, 63)
    gram_start_step: int | None = None
    gram_start_epoch: float | None = None
    gram_token_norm: bool = False
    gram_channel_norm: bool = True
    # chapter-4 GAN (training.gan.objective): the λ of Eq. 4.3 (thesis: none given; pix2pix's 1 and 100, a small TV
    # weight), the TV sum (Eq. 4.6) or mean, the tagger's BCE/focal weights and γ (Eq. 4.1-4.2, γ = 2), and the
    # stage-2 variant: "attention" (M-Attention: ω and L_inv) or "add" (M-Add: neither, thesis §4.3.1)
    cgan_weight: float = 1.0
    l1_weight: float = 100.0
    tv_weight: float = 1e-5
    tv_reduction: Literal["sum", "mean"] = "sum"
    bce_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    manipulation_mode: Literal["attention", "add"] = "attention"


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
    # GAN stage 1: the discriminator's learning rate (null: ``lr``)
    discriminator_lr: float | None = None


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


# ------------------------------------------------------------------------------------------ types
class _Mismatch(Exception):
    """A value does not fit a field's type (internal: turned into a :class:`TrainingConfigError`)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config dataclass."""
    return typing.get_type_hints(cls)


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and is_dataclass(hint)


def _union_members(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint`` (and converted: lists to tuples, whole floats to ints, ints to
    floats); raises :class:`_Mismatch` when it does not fit."""
    members = _union_members(hint)
    if members is not None:
        for member in members:
            try:
                return coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Mismatch
    if origin is tuple:
        return _coerce_tuple(value, args)
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch
    return _coerce_scalar(value, hint)


def _coerce_tuple(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0]) for v in value)
    if len(value) != len(args):
        raise _Mismatch
    return tuple(coerce(v, a) for v, a in zip(value, args))


def _coerce_scalar(value: Any, hint: Any) -> Any:
    if hint is bool and isinstance(value, bool):
        return value
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise _Mismatch
    if hint is float and isinstance(value, (int, float)):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise _Mismatch


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings")}


def describe_type(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: "an integer", "a list of 2 numbers", "one of "fp32", "bf16"", "a string or null"."""
    members = _union_members(hint)
    if members is not None:
        return " or ".join(describe_type(m, plural) for m in members)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is tuple:
        lists = "lists" if plural else "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{lists} of {describe_type(args[0], plural=True)}"
        if len(set(args)) == 1:
            return f"{lists} of {len(args)} {describe_type(args[0], plural=True)}"
        return f"{lists} of {len(args)} values"
    if origin is dict or hint is dict:
        return "objects" if plural else "an object"
    if hint in _NOUNS:
        return _NOUNS[hint][plural]
    return "values" if plural else "any value"


def example_value(hint: Any, default: Any = None) -> Any:
    """A value that fits ``hint``: the field's default when it has a useful one, else a made-up one."""
    if isinstance(default, tuple) and len(json.dumps(default)) > 40:
        default = default[:1]  # a long list: its first item shows the form
    if default not in (None, "", ()) and len(json.dumps(default)) <= 40:
        return json.loads(json.dumps(default))  # tuples as lists
    members = _union_members(hint)
    if members is not None:
        return example_value(next(m for m in members if m is not type(None)))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return args[0]
    if origin is tuple:
        items = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        return [example_value(a) for a in items]
    if origin is dict or hint is dict:
        return {}
    return {int: 1, float: 0.5, bool: True, str: "text"}.get(hint, "value")


def _as_cli_text(value: Any) -> str:
    """How ``value`` is written after ``--set key=`` (a string as is, anything else as JSON)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"'{text}'" if any(c in text for c in " []{}\"*") else text


# ------------------------------------------------------------------------------------------ building
def _field_default(cls: type, name: str) -> Any:
    return getattr(cls(), name)


def _field_error(key: str, hint: Any, value: Any, default: Any) -> TrainingConfigError:
    example = json.dumps(example_value(hint, default))
    return TrainingConfigError(f"config key {key} must be {describe_type(hint)}, got {json.dumps(value)}; "
                               f"e.g. \"{key.rsplit('.', 1)[-1]}\": {example}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise TrainingConfigError(f"unknown config key(s) in {where or 'top level'}: {unknown}; known: {sorted(hints)}")
    kw = {}
    for name, value in data.items():
        key = f"{where}.{name}".strip(".")
        hint = hints[name]
        if _is_section(hint):
            if not isinstance(value, Mapping):
                raise TrainingConfigError(f"config key {key} is a section: give an object of its fields, e.g. "
                                          f"\"{name}\": {{}} or --set {_example_key(hint, key)}")
            kw[name] = _build(hint, value, key)
            continue
        try:
            kw[name] = coerce(value, hint)
        except _Mismatch:
            raise _field_error(key, hint, value, _field_default(cls, name)) from None
    return cls(**kw)


def _example_key(section: type, key: str) -> str:
    """``key.<first field>=<example>`` of a section (for "this is a section" messages)."""
    first = fields(section)[0]
    hint = _hints(section)[first.name]
    return f"{key}.{first.name}={_as_cli_text(example_value(hint, _field_default(section, first.name)))}"


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "colorize_config":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ------------------------------------------------------------------------------------------ --set
def _all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted field name of the config (``run.max_steps``, ``stage``, ...)."""
    out = []
    for name, hint in _hints(cls or TrainConfig).items():
        key = f"{prefix}{name}"
        out.extend(_all_keys(hint, key + ".") if _is_section(hint) else [key])
    return out


def _unknown_key(text: str, dotted: str) -> TrainingConfigError:
    keys = _all_keys()
    last = dotted.rsplit(".", 1)[-1]
    guesses = [k for k in keys if k.rsplit(".", 1)[-1] == last] or difflib.get_close_matches(dotted, keys, n=3)
    hint = f"; did you mean {' or '.join(guesses)}?" if guesses else f"; keys look like {keys[1]} or {keys[-1]}"
    return TrainingConfigError(f"--set {text}: unknown config key {dotted!r}{hint}")


def _override_target(text: str, keys: list[str]) -> tuple[type, str] | None:
    """The (dataclass, field) a dotted ``--set`` key names; None inside ``model.colorize_config`` (free-form)."""
    cls: type = TrainConfig
    for i, name in enumerate(keys):
        dotted = ".".join(keys[: i + 1])
        hints = _hints(cls)
        if name not in hints:
            raise _unknown_key(text, ".".join(keys))
        hint, last = hints[name], i == len(keys) - 1
        if _is_section(hint):
            if last:
                raise TrainingConfigError(f"--set {text}: {dotted} is a section, not a value; set one of its "
                                          f"fields, e.g. --set {_example_key(hint, dotted)}")
            cls = hint
        elif not last:
            if name == "colorize_config":
                return None
            raise TrainingConfigError(f"--set {text}: {dotted} is a value, not a section; "
                                      f"write --set {dotted}=VALUE")
        else:
            return cls, name
    raise AssertionError("unreachable")


def _override_value(text: str, key: str, raw: str, cls: type, name: str) -> Any:
    """The ``--set`` value for field ``name`` of ``cls``: JSON when it parses and fits, else the text itself."""
    hint = _hints(cls)[name]
    try:
        parsed: Any = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw
    for candidate in (parsed, raw):
        try:
            return coerce(candidate, hint)
        except _Mismatch:
            continue
    example = _as_cli_text(example_value(hint, _field_default(cls, name)))
    raise TrainingConfigError(f"--set {text}: {key} must be {describe_type(hint)}, got {raw!r}; "
                              f"e.g. --set {key}={example}")


def parse_override(text: str) -> dict[str, Any]:
    """``"run.max_steps=10"`` → ``{"run": {"max_steps": 10}}``: the key must exist and the value (JSON when it
    parses, else the text) must fit its type, or a one-line :class:`TrainingConfigError` says what would."""
    if "=" not in text:
        raise TrainingConfigError(f"--set {text}: an override looks like section.field=value, "
                                  "e.g. --set run.max_steps=100")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise TrainingConfigError(f"--set {text}: {path.strip()!r} is not a config key; "
                                  "e.g. --set run.max_steps=100")
    target = _override_target(text, keys)
    if target is None:  # inside model.colorize_config: plain JSON
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
    else:
        value = _override_value(text, ".".join(keys), raw, *target)
    out: dict[str, Any] = {}
    node = out
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = list(value) if isinstance(value, tuple) else value
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
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise TrainingConfigError(f"config file {path} {what}; pass --config a .json file "
                                  "(e.g. training/configs/tiny_smoke.json)")
    if path.suffix == ".py":
        obj = runpy.run_path(str(path)).get("CONFIG")
        if obj is None:
            raise TrainingConfigError(f"config file {path} defines no CONFIG; set CONFIG = {{...}} in it")
        data = obj.to_dict() if isinstance(obj, TrainConfig) else obj
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise TrainingConfigError(f"config file {path} is not valid JSON ({e}); fix that line") from None
    if not isinstance(data, Mapping):
        raise TrainingConfigError(f"config file {path} must hold an object ({{\"stage\": ..., \"run\": {{...}}}})")
    return config_from_dict(data, overrides)


def _size_multiple(stage: str) -> int:
    """What the stage's family needs image sides to be a multiple of (64 when the stage is unknown: its own
    error comes when the run starts)."""
    from colorize.families import get_family
    from training.stages import STAGES

    return get_family(STAGES[stage].version).size_multiple if stage in STAGES else 64


def _min_batch_size(stage: str) -> int:
    from training.stages import STAGES

    return STAGES[stage].min_batch_size if stage in STAGES else 1


def validate(cfg: TrainConfig) -> None:
    """Reject values that would fail late or silently do the wrong thing."""
    o, r, a = cfg.objective, cfg.run, cfg.augment
    for name in ("reference_drop", "sketch_drop", "background_p", "inpaint_p"):
        if not 0.0 <= getattr(o, name) <= 1.0:
            raise TrainingConfigError(f"objective.{name} must be in [0, 1]")
    if not all(0.0 <= p <= 1.0 for p in o.hint_drop):
        raise TrainingConfigError("objective.hint_drop holds one drop rate in [0, 1] per sketch hint, e.g. "
                                  "[0.1, 0.1, 0.1, 0.1]")
    if o.gram_weight < 0 or any(b < 1 for b in o.gram_blocks):
        raise TrainingConfigError("objective.gram_weight must be >= 0 and objective.gram_blocks 1-based block "
                                  "numbers, e.g. [23, 63]")
    lo, hi = o.threshold_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise TrainingConfigError("objective.threshold_range must be [lo, hi] with 0 <= lo <= hi <= 1")
    if o.prediction not in ("eps", "v"):
        raise TrainingConfigError("objective.prediction must be 'eps' or 'v'")
    if r.precision not in ("fp32", "bf16", "fp16", "auto"):
        raise TrainingConfigError("run.precision must be fp32, bf16, fp16 or auto")
    if r.batch_size < 1 or r.grad_accum < 1 or r.max_steps < 0:
        raise TrainingConfigError("run.batch_size and run.grad_accum must be >= 1, run.max_steps >= 0")
    if not a.buckets:
        raise TrainingConfigError("augment.buckets is empty; give at least one [height, width], e.g. [[768, 768]]")
    multiple = _size_multiple(cfg.stage)
    for h, w in a.buckets:
        if h % multiple or w % multiple:
            raise TrainingConfigError(f"bucket {h}x{w} is not a multiple of {multiple} (the sketch encoder's stride)")
    biggest = max(max(b) for b in a.buckets)
    if a.load_size is not None and a.load_size <= biggest:
        raise TrainingConfigError(f"augment.load_size ({a.load_size}) must exceed the largest bucket side ({biggest}); "
                                  "or set it to null to resize by augment.scale_range (thesis §3.2)")
    if any(getattr(o, k) < 0 for k in ("cgan_weight", "l1_weight", "tv_weight", "bce_weight", "focal_weight",
                                       "focal_gamma")):
        raise TrainingConfigError("the GAN loss weights (objective.cgan_weight, l1_weight, tv_weight, bce_weight, "
                                  "focal_weight) and objective.focal_gamma must be >= 0")
    least = _min_batch_size(cfg.stage)
    if r.batch_size < least:
        raise TrainingConfigError(f"stage {cfg.stage} needs run.batch_size >= {least} (its pairs come from one "
                                  f"micro-batch), got {r.batch_size}")
    d = cfg.data
    if not 0.0 <= d.max_bad_fraction <= 1.0 or d.min_bad_allowance < 0:
        raise TrainingConfigError("data.max_bad_fraction must be in [0, 1] and data.min_bad_allowance >= 0, "
                                  "e.g. --set data.max_bad_fraction=0.01")
    if not 0.0 <= a.border_max_frac < 0.5:
        raise TrainingConfigError("augment.border_max_frac must be in [0, 0.5)")
