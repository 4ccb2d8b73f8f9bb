"""What ``python -m colorize inspect`` says of a GAN file: its stage, its configs and its keys (header only)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from colorize.checkpoint.common import TensorInfo, shape_of
from colorize.checkpoint.infer import training_info
from colorize.checkpoint.layout import compare_keys, result_line
from colorize.families.gan.checkpoint import build_gan_modules, gan_state_dict, read_gan_config
from colorize.families.gan.networks import GANConfig

STAGE_TITLES = {
    "gan_tagger": "gan_tagger (the tag-pretrained reference encoder, thesis §4.2.1; no generator yet)",
    "gan_stage1": "gan_stage1 (encoder + generator, thesis §4.2.2: colorizes; no tag edits)",
    "gan_stage2": "gan_stage2 (encoder + generator + tag mapper, thesis §4.3: colorizes and edits tags)",
}


def gan_report(header: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None, path: str
               ) -> tuple[dict[str, Any], bool]:
    """``(report, ok)`` of a GAN file: the keys of each component against the modules its config builds."""
    name = Path(path).name or "checkpoint"
    config = read_gan_config(header, metadata, name)
    with torch.device("meta"):
        expected = gan_state_dict({c: m for c, m in build_gan_modules(config).items() if c in config.components})
    got = {k: shape_of(v) for k, v in header.items()}
    match = compare_keys({k: tuple(v.shape) for k, v in expected.items()}, got, optional=(), check_shapes=True)
    g, m = config.generator, config.manipulation
    full = (g.encoder_widths, g.tag_encoder_widths, g.tag_encoder_depths) == (
        GANConfig().encoder_widths, GANConfig().tag_encoder_widths, GANConfig().tag_encoder_depths)
    report = {
        "path": path, "kind": "colorize-gan", "family": "gan", "stage": config.stage,
        "components": list(config.components), "size": "full" if full else "custom",
        "n_tensors": len(header), "n_params": sum(int(torch.Size(shape_of(v)).numel()) for v in header.values()),
        "tags": len(config.tags), "tag_examples": list(config.tags[:8]),
        "generator": (f"encoder {'/'.join(map(str, g.encoder_widths))}, reference {g.reference_channels} ch at "
                      f"{g.reference_size}² ({g.reference_size // 32}² positions), fusion {g.reference_fusion}, "
                      f"RBCA {'on' if g.use_rbca else 'off'}, norm {g.norm}"),
        "tag_encoder": (f"ResNet {'/'.join(map(str, g.tag_encoder_widths))} x "
                        f"{'/'.join(map(str, g.tag_encoder_depths))} blocks, {g.num_tags} tags"),
        "tag_mapper": (f"{'M-Attention' if m.mode == 'attention' else 'M-Add'}, MLP "
                       f"{'/'.join(map(str, m.hidden_widths))}" if m else None),
        "missing": match.missing, "unexpected": match.unexpected,
        "wrong_shape": [k for k, _, _ in match.mismatched], "ok": match.ok, "trained": training_info(metadata),
    }
    return report, match.ok


def format_gan_report(rep: Mapping[str, Any]) -> str:
    values = f"{rep['n_params'] / 1e6:.1f}M" if rep["n_params"] >= 1e5 else f"{rep['n_params']:,}"
    lines = [
        f"file:             {rep['path']} ({rep['n_tensors']} tensors, {values} values)",
        "version:          chapter-4 GAN (family 'gan'; one forward pass, no diffusion: no parameterisation)",
        f"stage:            {STAGE_TITLES.get(rep['stage'], rep['stage'])}",
        f"size:             {rep['size']}",
        f"tag encoder:      {rep['tag_encoder']}; e.g. {', '.join(rep['tag_examples'])}",
    ]
    if "generator" in rep["components"]:
        lines.append(f"generator:        {rep['generator']}")
    if rep["tag_mapper"]:
        lines.append(f"tag mapper:       {rep['tag_mapper']}")
    if rep["trained"]:
        t = rep["trained"]
        lines.append(f"trained:          stage {t.get('stage')}, step {t.get('step')}" + (" (EMA)" if t.get("ema") else ""))
    lines.append(result_line(rep, "every key matches the modules of its config", examples=3))
    return "\n".join(lines)


__all__ = ["format_gan_report", "gan_report"]
