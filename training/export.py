"""Export trained weights as a safetensors file in the released key layout (official ``util.py:101-122`` at commit
``c9bd9fb`` writes the same layout), so ``colorize.pipeline.Colorizer.from_files`` and the nodes load it like
``mult-eps-ft.safetensors``:

``model.diffusion_model.*`` (U-Net) and ``control_encoder.*`` (sketch encoder) in fp32, ``first_stage_model.*``
(VAE) in fp16 as released (or fp32), no CLIP and no schedule buffers. The model config is stored as JSON in the
metadata entry ``colorize_config`` (as ``colorize.tiny`` does), so non-standard sizes and the prediction type are
recorded; ``colorize_training`` records the stage and step.

``python -m training.export RUN_OR_STATE.pt --out model.safetensors [--no-ema]`` exports a training checkpoint (a GAN
stage's as its GAN file, :mod:`training.gan.export`).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from colorize.atomic import save_safetensors_atomic
from colorize.checkpoint import CONFIG_METADATA_KEY
from colorize.checkpoint.infer import TRAINING_METADATA_KEY
from colorize.config import ColorizerConfig
from colorize.families import component_prefixes

#: Component prefixes a trained model can have (CLIP is never exported).
PREFIXES = {k: v for k, v in component_prefixes().items() if not k.startswith("clip_")}


def released_layout(
    denoiser_sd: Mapping[str, Tensor], vae_sd: Mapping[str, Tensor], vae_dtype: torch.dtype = torch.float16
) -> dict[str, Tensor]:
    """Denoiser (``unet.*``, ``sketch_encoder.*``, the family's own components such as v1.5 ``thresh_embedder.*``,
    ``transformer.*`` or v2 ``bg_encoder.*``, ``style_encoder.*``) and VAE state dicts → one flat dict with released key names (all fp32 but the VAE: ``vae_dtype``; tensors stay on
    their device)."""
    out: dict[str, Tensor] = {}
    for k, v in denoiser_sd.items():
        group, _, rest = k.partition(".")
        if group not in PREFIXES or group == "vae":
            raise KeyError(f"unexpected denoiser key {k!r}")
        out[PREFIXES[group] + rest] = v.detach().to(torch.float32)
    for k, v in vae_sd.items():
        out[PREFIXES["vae"] + k] = v.detach().to(vae_dtype)
    return out


def export_safetensors(
    path: str | Path,
    denoiser_sd: Mapping[str, Tensor],
    vae_sd: Mapping[str, Tensor],
    config: ColorizerConfig,
    info: Mapping[str, Any] | None = None,
    vae_fp16: bool = True,
) -> Path:
    """Write the released-layout file atomically (an existing file is replaced)."""
    tensors = released_layout(denoiser_sd, vae_sd, torch.float16 if vae_fp16 else torch.float32)
    tensors = {k: v.to("cpu").contiguous() for k, v in tensors.items()}
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), TRAINING_METADATA_KEY: json.dumps(dict(info or {}))}
    return save_safetensors_atomic(tensors, path, metadata=meta, overwrite=True)


def export_training_state(state_path: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Export a ``training.checkpoint`` file: its (EMA) denoiser weights and the frozen VAE of its init."""
    from training.checkpoint import load_training_state
    from training.config import config_from_dict
    from training.model import build_modules

    state = load_training_state(state_path)
    cfg = config_from_dict(json.loads(state["train_config"]))
    from training.stages import get_stage

    if get_stage(cfg.stage).version == "gan":  # the chapter-4 GAN's own file format
        from training.gan.export import export_gan_state

        return export_gan_state(state, cfg, out, use_ema)
    mods = build_modules(cfg.model, cfg.objective.prediction, version=get_stage(cfg.stage).version)
    sd = dict(state["model"])
    if use_ema and state.get("ema"):
        sd.update(state["ema"]["shadow"])
    config = ColorizerConfig.from_dict(json.loads(state["colorize_config"]))
    config = replace(config, parameterization=cfg.objective.prediction)  # type: ignore[arg-type]
    info = {"stage": cfg.stage, "step": int(state["step"]), "ema": bool(use_ema and state.get("ema"))}
    return export_safetensors(out, sd, mods.vae.state_dict(), config, info, cfg.run.export_vae_fp16)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("state", help="a training checkpoint (runs/X/checkpoints/step_N.pt) or a run folder (latest)")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--no-ema", action="store_true", help="export the raw weights even when an EMA exists")
    args = ap.parse_args(argv)
    state = Path(args.state)
    if state.is_dir():
        from training.checkpoint import newest_readable_state
        from training.errors import TrainingError

        try:
            found = newest_readable_state(state)
        except TrainingError as e:
            raise SystemExit(f"error: {e}") from None
        if found is None:
            raise SystemExit(f"error: no checkpoints under {state}/checkpoints; pass a run folder that has some")
        state = found[0]
    print(export_training_state(state, args.out, use_ema=not args.no_ema))


if __name__ == "__main__":
    main()
