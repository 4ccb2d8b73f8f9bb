"""Sub-module configs inferred from checkpoint shapes, and the config our own files store in their metadata."""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any, Iterable, Mapping

from colorize.checkpoint.common import shape_of
from colorize.config import (
    SketchEncoderConfig,
    UNetConfig,
    VAEConfig,
)
from colorize.errors import CheckpointError

CONFIG_METADATA_KEY = "colorize_config"  # safetensors __metadata__ entry holding ColorizerConfig.to_dict() JSON
TRAINING_METADATA_KEY = "colorize_training"  # the entry training/ exports write: {"stage", "step", "ema"} JSON

# --------------------------------------------------------------------------------------------
# Config inference from shapes
# --------------------------------------------------------------------------------------------


def _need(shapes: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"cannot infer the {what} configuration: key {key!r} is missing.")
    return shape_of(shapes[key])


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def default_num_head_channels(model_channels: int) -> int:
    """Head width when no metadata says: 64 (SD2.1) if it divides the width, else the largest of
    32/16/8 giving at least two heads at the first level (matches the tiny presets)."""
    if model_channels % 64 == 0:
        return 64
    for c in (32, 16, 8):
        if model_channels % c == 0 and model_channels // c >= 2:
            return c
    return model_channels


def infer_unet_config(unet: Mapping[str, Any], num_head_channels: int | None = None) -> UNetConfig:
    """UNetConfig from U-Net shapes (keys without the ``model.diffusion_model.`` prefix)."""
    w0 = _need(unet, "input_blocks.0.0.weight", "U-Net")
    mc, in_ch = w0[0], w0[1]
    out_ch = _need(unet, "out.2.weight", "U-Net")[0]
    blocks = _indices(unet, r"input_blocks\.(\d+)\.")
    downs = _indices(unet, r"input_blocks\.(\d+)\.0\.op\.weight$")
    levels = len(downs) + 1
    n_res, rem = divmod(len(blocks) - 1 - len(downs), levels)
    if rem or n_res < 1:
        raise CheckpointError(f"cannot infer the U-Net configuration: {len(blocks)} input blocks do not form {levels} levels.")
    mult, attn, attn_blocks = [], [], []
    for level in range(levels):
        first = 1 + level * (n_res + 1)
        ch = _need(unet, f"input_blocks.{first}.0.out_layers.3.weight", "U-Net")[0]
        if ch % mc:
            raise CheckpointError(f"cannot infer the U-Net configuration: level {level} width {ch} is not a multiple of {mc}.")
        mult.append(ch // mc)
        if any(k.startswith(f"input_blocks.{first}.1.") for k in unet):
            attn.append(2**level)
            attn_blocks.append(f"input_blocks.{first}.1.")
    k_keys = sorted(k for k in unet if k.endswith("attn2.to_k.weight"))
    if not k_keys:
        raise CheckpointError("cannot infer the U-Net configuration: no cross-attention (attn2.to_k) weights found.")
    context_dim = shape_of(unet[k_keys[0]])[1]
    depth_src = attn_blocks[0] if attn_blocks else "middle_block.1."
    depth = len(_indices(unet, re.escape(depth_src) + r"transformer_blocks\.(\d+)\.")) or 1
    cfg = UNetConfig(
        in_channels=in_ch,
        out_channels=out_ch,
        model_channels=mc,
        channel_mult=tuple(mult),
        num_res_blocks=n_res,
        attention_resolutions=tuple(sorted(attn, reverse=True)),
        num_head_channels=num_head_channels or default_num_head_channels(mc),
        transformer_depth=depth,
        context_dim=context_dim,
    )
    return _sdxl_fields(unet, cfg, n_res) or cfg


def _transformer_depth(unet: Mapping[str, Any], block: str) -> int:
    return len(_indices(unet, re.escape(block) + r"transformer_blocks\.(\d+)\."))


def _sdxl_fields(unet: Mapping[str, Any], cfg: UNetConfig, n_res: int) -> UNetConfig | None:
    """``cfg`` with the SDXL fields of :class:`UNetConfig` when the shapes show an SDXL-style U-Net, ``None`` for
    an SD2.1 one (whose config stays exactly as inferred before these fields existed).

    An SDXL U-Net (ColorizeDiffusion XL's ``DualCondUNetXL``) is told by a ``label_emb`` (the "sequential" adm
    input ``y``; its width is ``label_emb.0.0.weight[1]``, 512 in XL) or by transformer depths that differ between
    the attention levels or in the middle block. Then: the depth is one number per level (counted in the level's
    first attention block; a level without attention gets 1, which the U-Net ignores and the XL config also
    writes), the middle depth is stored, ``proj_in/out`` are Linear when every ``proj_in.weight`` is 2-D, and the
    hints sit at their default positions written out (after block 0, every Downsample and the last input block:
    0, 3, 6, 8 for three levels of two blocks). A 2-D ``proj_in`` alone does not make a U-Net SDXL: SD2.x
    text-to-image files store Linear projections and keep the SD2.1 answer (``conv_proj_weights`` converts them).
    """
    levels = len(cfg.channel_mult)
    per_level = [_transformer_depth(unet, f"input_blocks.{1 + level * (n_res + 1)}.1.") or 1
                 for level in range(levels)]
    middle = _transformer_depth(unet, "middle_block.1.")
    attn_depths = {per_level[int(math.log2(r))] for r in cfg.attention_resolutions}
    uneven = len(attn_depths) > 1 or bool(middle and attn_depths and middle not in attn_depths)
    adm = None
    if "label_emb.0.0.weight" in unet:
        label = shape_of(unet["label_emb.0.0.weight"])
        if len(label) != 2:
            raise CheckpointError(f"cannot infer the U-Net configuration: label_emb.0.0.weight has shape {label}, "
                                  "expected a Linear weight (out, adm width).")
        adm = label[1]
    if adm is None and not uneven:
        return None
    linear = [len(shape_of(v)) == 2 for k, v in unet.items() if k.endswith(".proj_in.weight")]
    if any(linear) != all(linear):
        raise CheckpointError("cannot infer the U-Net configuration: some proj_in layers are Linear (2-D weights) "
                              "and some are 1x1 convolutions.")
    hints = [0, *((level + 1) * (n_res + 1) for level in range(levels - 1))]
    if hints[-1] != levels * (n_res + 1) - 1:
        hints.append(levels * (n_res + 1) - 1)
    return replace(cfg, transformer_depth=tuple(per_level), transformer_depth_middle=middle or per_level[-1],
                   use_linear_in_transformer=bool(linear) and all(linear), adm_in_channels=adm,
                   hint_blocks=tuple(hints))


def infer_sketch_config(sketch: Mapping[str, Any]) -> SketchEncoderConfig:
    """SketchEncoderConfig from ``control_encoder.*`` shapes (prefix stripped)."""
    in_ch = _need(sketch, "model.0.weight", "sketch encoder")[1]
    mc = _need(sketch, "zero_layer.0.weight", "sketch encoder")[0]
    outs = _indices(sketch, r"output_blocks\.(\d+)\.1\.weight$")
    return SketchEncoderConfig(
        in_ch=in_ch,
        model_channels=mc,
        ch_mults=tuple(shape_of(sketch[f"output_blocks.{i}.1.weight"])[0] // mc for i in outs),
    )


def infer_vae_config(vae: Mapping[str, Any]) -> VAEConfig:
    """VAEConfig from ``first_stage_model.*`` shapes (prefix stripped)."""
    conv_in = _need(vae, "encoder.conv_in.weight", "VAE")
    ch = conv_in[0]
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(_need(vae, f"encoder.down.{i}.block.0.conv2.weight", "VAE")[0] // ch for i in levels)
    return VAEConfig(
        embed_dim=_need(vae, "quant_conv.weight", "VAE")[0] // 2,
        z_channels=_need(vae, "decoder.conv_in.weight", "VAE")[1],
        in_channels=conv_in[1],
        out_ch=_need(vae, "decoder.conv_out.weight", "VAE")[0],
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")),
    )


__all__ = [
    "CONFIG_METADATA_KEY",
    "default_num_head_channels",
    "infer_sketch_config",
    "infer_unet_config",
    "infer_vae_config",
]


def training_info(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """What a ``training/`` export says of its run (:data:`TRAINING_METADATA_KEY`: stage, step, EMA), or ``None``."""
    raw = (metadata or {}).get(TRAINING_METADATA_KEY)
    try:
        info = json.loads(raw) if raw else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None
