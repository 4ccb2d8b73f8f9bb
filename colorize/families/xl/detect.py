"""Which ColorizeDiffusion XL model a checkpoint is, its parameterisation, and its module configs from shapes.

Facts from the official repository tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``:

* The app has two model types, ``sdxl`` (``refnet/models/colorizerXL.py``) and ``xlv2``
  (``refnet/models/v2-colorizerXL.py``), and picks one by the file name's start (``backend/appfunc.py:36-40,
  133-137``). We decide from the keys instead, as for every other family: an ``sdxl`` file holds the SDXL U-Net
  (``model.diffusion_model.*`` with ``label_emb``, Linear ``proj_in/out``, cross-attention over the
  ClusterConcat context), the multi-scale sketch encoder (``control_encoder.{proj_ins,downsample_layers,
  attn_layer}.*``) and ClusterConcat (``proj.*``); an ``xlv2`` file adds the ReferenceNet (``bg_encoder.*``),
  the background LoRA (``…attn2.to_{q,k,v}.lora_{down,up}_background.weight``) and ``conv_fg.*`` inside the U-Net.
  CLIP and the tagger come from their own files (``ckpt_util.py:79-96``).
* Parameterisation: ``eps`` when the file name contains "eps", otherwise ``v`` (``backend/appfunc.py:147``).
  :func:`xl_parameterization` takes the config our own exports store first, then that rule; an explicit choice
  wins over both.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from colorize.checkpoint.common import shape_of
from colorize.checkpoint.infer import CONFIG_METADATA_KEY, infer_unet_config
from colorize.config import UNetConfig
from colorize.errors import CheckpointError, InputError
from colorize.families.xl.conditioning import ClusterConcatConfig, infer_cluster_concat_config
from colorize.families.xl.layout import ModelType
from colorize.families.xl.sketch_encoder import MultiScaleEncoderConfig, infer_sketch_encoder_config

UNET, SKETCH, PROJ, BG_ENCODER = "model.diffusion_model.", "control_encoder.", "proj.", "bg_encoder."
#: Key names every XL checkpoint has (U-Net with its adm input, multi-scale sketch encoder, ClusterConcat).
XL_MARKERS: tuple[str, ...] = (
    f"{UNET}input_blocks.0.0.weight",
    f"{UNET}label_emb.0.0.weight",
    f"{SKETCH}proj_ins.0.weight",
    f"{SKETCH}downsample_layers.0.1.weight",
    f"{SKETCH}attn_layer.to_q.weight",
    f"{PROJ}attn.to_q.weight",
    f"{PROJ}proj.0.weight",
)
LORA_SUFFIXES = ("lora_down_background.weight", "lora_up_background.weight")
CONV_FG = f"{UNET}conv_fg."
PARAMETERIZATIONS = ("eps", "v")


def _shapes(keys: Collection[str] | Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """Key → shape when ``keys`` is a mapping of shape-like values (tensors, ``TensorInfo``, lists), else None."""
    if not isinstance(keys, Mapping):
        return None
    try:
        return {k: shape_of(v) for k, v in keys.items()}
    except (TypeError, ValueError):
        return None


def is_xlv2_key(key: str) -> bool:
    """Whether a key is one of xlv2's own (ReferenceNet, background LoRA, ``conv_fg``)."""
    return key.startswith((BG_ENCODER, CONV_FG)) or (key.startswith(UNET) and key.endswith(LORA_SUFFIXES))


def xl_model_type(keys: Collection[str] | Mapping[str, Any]) -> ModelType | None:
    """``"sdxl"``, ``"xlv2"`` or ``None`` (not a ColorizeDiffusion XL file) from a checkpoint's keys.

    Names decide (see the module docstring); when ``keys`` maps them to shapes, the shapes must agree too: every
    U-Net ``proj_in`` is Linear (2-D) and the cross-attention width is the ClusterConcat output width (2048 at full
    size). An SD2.1 ColorizeDiffusion file (no ``label_emb``, the ``MultiEncoder`` sketch encoder), an SDXL
    text-to-image file (``conditioner.embedders.*``, no sketch encoder), CLIP and ISNet files are not XL."""
    names = set(keys.keys() if isinstance(keys, Mapping) else keys)
    if not all(m in names for m in XL_MARKERS):
        return None
    shapes = _shapes(keys)
    if shapes is not None:
        proj_in = [s for k, s in shapes.items() if k.startswith(UNET) and k.endswith(".proj_in.weight")]
        contexts = {s[1] for k, s in shapes.items()
                    if k.startswith(UNET) and k.endswith("attn2.to_k.weight") and len(s) == 2}
        proj0 = shapes[f"{PROJ}proj.0.weight"]
        if not proj_in or any(len(s) != 2 for s in proj_in) or len(proj0) != 2 or contexts != {proj0[0]}:
            return None
    return "xlv2" if any(is_xlv2_key(k) for k in names) else "sdxl"


def xl_parameterization(metadata: Mapping[str, str] | None, file_name: str | Path | None,
                        override: str | None = None) -> tuple[str, str]:
    """``(parameterization, rule)`` of an XL checkpoint; ``rule`` says what decided: ``"override"`` (an explicit
    ``eps``/``v``), ``"metadata"`` (the ``parameterization`` of the config our exports store under
    :data:`~colorize.checkpoint.CONFIG_METADATA_KEY`) or ``"file name"`` (the official rule: ``eps`` when the base
    name contains "eps", case as written, otherwise ``v``; no name counts as a name without "eps")."""
    if override is not None:
        if override not in PARAMETERIZATIONS:
            raise InputError(f"parameterization must be 'eps' or 'v', got {override!r}")
        return override, "override"
    if metadata and CONFIG_METADATA_KEY in metadata:
        what = Path(file_name).name if file_name else "checkpoint"
        try:
            stored = json.loads(metadata[CONFIG_METADATA_KEY])
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{what}: the stored config ({CONFIG_METADATA_KEY}) is not JSON "
                                  f"({type(e).__name__}).") from None
        value = stored.get("parameterization") if isinstance(stored, dict) else None
        if value is not None:
            if value not in PARAMETERIZATIONS:
                raise CheckpointError(f"{what}: the stored config says parameterization={value!r}; expected 'eps' "
                                      "or 'v'.")
            return value, "metadata"
    name = Path(file_name).name if file_name else ""
    return ("eps" if "eps" in name else "v"), "file name"


@dataclass(frozen=True)
class XLShapeConfig:
    """What an XL checkpoint's shapes say: its model type, the U-Net, sketch-encoder and ClusterConcat configs,
    whether it carries the xlv2 ReferenceNet (``bg_encoder.*``) and the rank of its background LoRA (None
    without one). Head widths leave no trace in shapes: they are the released ones unless given."""

    model_type: ModelType
    unet: UNetConfig
    sketch: MultiScaleEncoderConfig
    proj: ClusterConcatConfig
    has_bg_encoder: bool
    background_lora_rank: int | None


def _part(shapes: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def xl_config_from_shapes(shapes: Mapping[str, Any], num_head_channels: int | None = None,
                          what: str = "checkpoint", *, sketch_dim_head: int = 128,
                          proj_dim_head: int = 128) -> XLShapeConfig:
    """:class:`XLShapeConfig` of a full state dict's shapes (prefixed keys; tensors, ``TensorInfo`` or shape
    lists). The head widths are not in the shapes: the U-Net's is ``num_head_channels`` (else
    :func:`~colorize.checkpoint.default_num_head_channels`: 64 at full size), the sketch encoder's and
    ClusterConcat's the released 128 unless given. :class:`~colorize.errors.CheckpointError` when it is not an XL
    checkpoint or a size cannot be read."""
    model_type = xl_model_type(shapes)
    if model_type is None:
        raise CheckpointError(f"{what} is not a ColorizeDiffusion XL checkpoint: it needs the SDXL U-Net "
                              f"({UNET}* with label_emb and Linear proj_in), the multi-scale sketch encoder "
                              f"({SKETCH}proj_ins/downsample_layers/attn_layer) and ClusterConcat ({PROJ}*).")
    try:
        unet = infer_unet_config(_part(shapes, UNET), num_head_channels)
        proj_part = _part(shapes, PROJ)
        needed = ("attn.to_q.weight", "proj.0.weight")
        proj = infer_cluster_concat_config({k: torch.empty(shape_of(proj_part[k]), device="meta") for k in needed},
                                           dim_head=proj_dim_head)
        sketch = infer_sketch_encoder_config(_part(shapes, SKETCH), dim_head=sketch_dim_head)
        ranks = {shape_of(v)[0] for k, v in shapes.items()
                 if k.startswith(UNET) and k.endswith("lora_down_background.weight")}
    except CheckpointError:
        raise
    except (IndexError, TypeError, ValueError, RuntimeError) as e:  # crafted shapes (wrong number of dims, ...)
        raise CheckpointError(f"cannot infer the XL configuration of {what}: {type(e).__name__}: "
                              f"{str(e)[:200]}") from None
    if proj.c_dim <= 0:
        raise CheckpointError(f"cannot infer the ClusterConcat configuration of {what}: proj.proj.0 takes "
                              f"{proj.input_dim + proj.c_dim} inputs, not more than the {proj.input_dim} CLIP ones.")
    if len(ranks) > 1:
        raise CheckpointError(f"{what}: the background LoRA pairs have different ranks {sorted(ranks)}.")
    return XLShapeConfig(
        model_type=model_type,
        unet=unet,
        sketch=sketch,
        proj=proj,
        has_bg_encoder=any(k.startswith(BG_ENCODER) for k in shapes),
        background_lora_rank=ranks.pop() if ranks else None,
    )


__all__ = [
    "LORA_SUFFIXES",
    "PARAMETERIZATIONS",
    "XLShapeConfig",
    "XL_MARKERS",
    "is_xlv2_key",
    "xl_config_from_shapes",
    "xl_model_type",
    "xl_parameterization",
]
