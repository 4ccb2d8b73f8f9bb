"""A file's stored config is a claim: what shapes show is read from the shapes, the rest is bounded.

Our own exports store their :class:`~colorize.config.ColorizerConfig` as JSON in the safetensors metadata
(:data:`~colorize.checkpoint.infer.CONFIG_METADATA_KEY`). Nothing in that text may drive module construction
unchecked: a crafted value could ask for a depth that builds for minutes, a head width of zero, or a CLIP tower
of a million layers. So every size the tensors show (U-Net, sketch encoder and VAE topology) is taken from the
shapes and the claim must agree with it; only what shapes cannot show (head widths, parameterisation, the
schedule, the VAE scale, the tiny CLIP config) comes from the metadata, and each such value is range-checked
here before anything is built. Weights must be floating point.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any

from colorize.checkpoint.common import dtype_of
from colorize.config import ClipConfig, ColorizerConfig, ScheduleConfig
from colorize.errors import CheckpointError

#: Longest stored config text accepted (a real one is about 1.5 KB).
MAX_CONFIG_CHARS = 64 * 1024
#: Widest head, layer or embedding a stored config may name (ViT-bigG is 1664 wide; 8192 leaves room).
MAX_WIDTH = 8192
#: Most transformer layers a stored CLIP config may name (ViT-bigG has 48).
MAX_LAYERS = 128
#: Largest image side / context length a stored CLIP config may name.
MAX_TOKENS_SIDE = 1024
MAX_VOCABULARY = 1 << 20
MAX_TIMESTEPS = 10_000
#: Dtypes a weight may be stored in; integer or boolean "weights" are not a checkpoint.
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"})
#: Integer buffers some files carry legitimately (Hugging Face CLIP's position indices, BatchNorm's counters).
INTEGER_BUFFER_SUFFIXES = ("position_ids", "num_batches_tracked")
#: The fields of each sub-config that the tensors do not show (everything else must match the shapes).
UNSHAPED_FIELDS = {"unet": ("num_head_channels",), "sketch": (), "vae": ("scale_factor",)}
#: ``ColorizerConfig.extras`` entries that are head widths (recovery transformer, v2 warp modules).
HEAD_WIDTH_EXTRAS = ("transformer_dim_head", "warp_dim_head")


def _claim_error(what: str, detail: str) -> CheckpointError:
    return CheckpointError(f"{what}: the stored config is not usable ({detail}); the file was modified after it "
                           "was written or is not one of ours. Re-download or re-export it.")


def config_from_metadata(text: str, what: str = "checkpoint") -> ColorizerConfig:
    """The stored config JSON as a :class:`ColorizerConfig`, bounded in length and nesting, with every value that
    shapes cannot show range-checked (:func:`check_unshaped`)."""
    if len(text) > MAX_CONFIG_CHARS:
        raise _claim_error(what, f"{len(text):,} characters, at most {MAX_CONFIG_CHARS:,} are read")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        cfg = ColorizerConfig.from_dict(data)
    except RecursionError:
        raise _claim_error(what, "nested too deeply") from None
    except (ValueError, KeyError, TypeError) as e:
        raise _claim_error(what, f"{type(e).__name__}: {str(e)[:200]}") from None
    check_unshaped(cfg, what)
    return cfg


def _positive_int(value: Any, name: str, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise _claim_error(what, f"{name}={value!r}, expected a whole number from 1 to {limit}")
    return value


def _head_width(value: Any, name: str, width: int, what: str) -> None:
    _positive_int(value, name, what, MAX_WIDTH)
    if width % value:
        raise _claim_error(what, f"{name}={value} does not divide the width {width}")


def check_clip_config(clip: ClipConfig, what: str) -> None:
    """Range checks of a stored CLIP config (it sizes the reference encoder built for the CLIP file)."""
    if not isinstance(clip.vision, Mapping) or not isinstance(clip.text, Mapping):
        raise _claim_error(what, "clip.vision and clip.text must be objects")
    _positive_int(clip.embed_dim, "clip.embed_dim", what, MAX_WIDTH)
    v, t = clip.vision, clip.text
    _positive_int(v.get("layers"), "clip.vision.layers", what, MAX_LAYERS)
    _head_width(v.get("head_width"), "clip.vision.head_width", _positive_int(v.get("width"), "clip.vision.width",
                                                                          what, MAX_WIDTH), what)
    side = _positive_int(v.get("image_size", 224), "clip.vision.image_size", what, MAX_TOKENS_SIDE)
    _positive_int(v.get("patch_size", 14), "clip.vision.patch_size", what, side)
    _positive_int(t.get("layers"), "clip.text.layers", what, MAX_LAYERS)
    _positive_int(t.get("context_length"), "clip.text.context_length", what, MAX_TOKENS_SIDE)
    _positive_int(t.get("vocab_size"), "clip.text.vocab_size", what, MAX_VOCABULARY)
    heads = _positive_int(t.get("heads"), "clip.text.heads", what, MAX_WIDTH)
    if _positive_int(t.get("width"), "clip.text.width", what, MAX_WIDTH) % heads:
        raise _claim_error(what, f"clip.text.heads={heads} does not divide clip.text.width={t.get('width')}")


def _check_schedule(s: ScheduleConfig, what: str) -> None:
    _positive_int(s.timesteps, "schedule.timesteps", what, MAX_TIMESTEPS)
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (s.linear_start, s.linear_end))
    if not ok or not 0 < s.linear_start < s.linear_end < 1:
        raise _claim_error(what, f"schedule linear_start={s.linear_start!r}, linear_end={s.linear_end!r}; expected "
                                 "0 < linear_start < linear_end < 1")


def check_unshaped(cfg: ColorizerConfig, what: str) -> None:
    """Range checks of every stored value that tensor shapes do not show."""
    if cfg.parameterization not in ("eps", "v"):
        raise _claim_error(what, f"parameterization={cfg.parameterization!r}, expected 'eps' or 'v'")
    _positive_int(cfg.unet.num_head_channels, "unet.num_head_channels", what, MAX_WIDTH)
    scale = cfg.vae.scale_factor
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and 0 < scale <= 100):
        raise _claim_error(what, f"vae.scale_factor={scale!r}, expected a number in (0, 100]")
    _check_schedule(cfg.schedule, what)
    check_clip_config(cfg.clip, what)
    for key in HEAD_WIDTH_EXTRAS:
        if key in cfg.extras:
            _positive_int(cfg.extras[key], f"extras.{key}", what, MAX_WIDTH)


def reconcile_config(inferred: ColorizerConfig, claimed: ColorizerConfig, what: str) -> ColorizerConfig:
    """``inferred`` (from shapes) with the claim's unshaped values; a claim that contradicts the shapes is a
    :class:`CheckpointError` naming the first differing fields."""
    diffs = []
    for part, unshaped in UNSHAPED_FIELDS.items():
        shown, said = asdict(getattr(inferred, part)), asdict(getattr(claimed, part))
        diffs += [f"{part}.{k}={said[k]!r} but the weights have {shown[k]!r}"
                  for k in shown if k not in unshaped and _plain(said[k]) != _plain(shown[k])]
    if diffs:
        raise _claim_error(what, "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""))
    unet = replace(inferred.unet, num_head_channels=claimed.unet.num_head_channels)
    for width in (unet.model_channels * m for m in unet.channel_mult):
        _head_width(unet.num_head_channels, "unet.num_head_channels", width, what)
    vae = replace(inferred.vae, scale_factor=claimed.vae.scale_factor)
    return replace(inferred, parameterization=claimed.parameterization, unet=unet, vae=vae, clip=claimed.clip,
                   schedule=claimed.schedule, extras=dict(claimed.extras))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def check_head_channels(value: int, cfg: ColorizerConfig, what: str) -> None:
    """A head width given by the caller (not stored) must divide every U-Net level's width."""
    for width in (cfg.unet.model_channels * m for m in cfg.unet.channel_mult):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or width % value:
            raise CheckpointError(f"{what}: num_head_channels={value!r} does not divide the U-Net width {width}; "
                                  "pass a head width that does (64 for the released models)")


def check_weight_dtypes(tensors: Mapping[str, Any], what: str, keys: Iterable[str] | None = None) -> None:
    """Every weight (of ``keys``, default all; integer buffers excepted) is stored as a floating-point type; else one
    named error."""
    bad = [(k, dtype_of(tensors[k])) for k in (tensors if keys is None else keys)
           if dtype_of(tensors[k]) not in (None, *FLOAT_DTYPES) and not k.endswith(INTEGER_BUFFER_SUFFIXES)]
    if bad:
        shown = ", ".join(f"{k} ({d})" for k, d in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise CheckpointError(f"{what}: {len(bad)} weights are not floating point: {shown}. A checkpoint stores "
                              "float16/bfloat16/float32 weights; this file is damaged or not a model. Re-download it.")


__all__ = [
    "FLOAT_DTYPES",
    "check_clip_config",
    "check_head_channels",
    "check_unshaped",
    "check_weight_dtypes",
    "config_from_metadata",
    "reconcile_config",
]
