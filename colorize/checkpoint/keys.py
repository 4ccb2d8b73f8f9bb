"""Key prefixes of the shared checkpoint components, splitting a state dict, and naming foreign files.

Released ColorizeDiffusion files are one flat state dict; each component sits under its official prefix
(``model.diffusion_model.`` for the U-Net, ``control_encoder.`` for the sketch encoder, ``first_stage_model.``
for the VAE, ``cond_stage_model.*`` for CLIP; official ``refnet/models`` wrappers at commit ``c9bd9fb``). A family's
own components add their prefixes (``colorize.families``); which family a file is comes from its keys, never
from its name.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from colorize.sampling.noise_schedule import BUFFER_NAMES

#: Shared component name -> key prefix; no prefix is a prefix of another one.
COMPONENT_PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "sketch_encoder": "control_encoder.",
    "vae": "first_stage_model.",
    "clip_visual": "cond_stage_model.visual.model.",
    "clip_text": "cond_stage_model.transformer.model.",
}
SCHEDULE_BUFFERS: tuple[str, ...] = BUFFER_NAMES
OPTIONAL_COMPONENTS: tuple[str, ...] = ("clip_visual", "clip_text", "schedule")
# CLIP comes from its own file and the schedule buffers are recomputed: never required.
DEFAULT_OPTIONAL: tuple[str, ...] = (
    COMPONENT_PREFIXES["clip_visual"],
    COMPONENT_PREFIXES["clip_text"],
    *SCHEDULE_BUFFERS,
)


def component_of(key: str, prefixes: Mapping[str, str] = COMPONENT_PREFIXES) -> str:
    """Which component a full state-dict key belongs to (``"schedule"``, or ``"unexpected"`` if none)."""
    for name, prefix in prefixes.items():
        if key.startswith(prefix):
            return name
    return "schedule" if key in SCHEDULE_BUFFERS else "unexpected"


def split_by_prefix(sd: Mapping[str, Any], prefixes: Mapping[str, str] = COMPONENT_PREFIXES) -> dict[str, dict[str, Any]]:
    """Split a state dict (or key->shape map) into components, prefixes stripped.

    Every name of ``prefixes`` plus ``schedule`` and ``unexpected`` is present (possibly empty); those two keep
    their full key names. ``colorize.families.split_checkpoint`` splits with every family's prefixes.
    """
    parts: dict[str, dict[str, Any]] = {c: {} for c in (*prefixes, "schedule", "unexpected")}
    for k, v in sd.items():
        c = component_of(k, prefixes)
        parts[c][k[len(prefixes.get(c, "")):]] = v
    return parts


def describe_foreign(keys: Iterable[str]) -> str:
    """A short guess of what a non-ColorizeDiffusion state dict is."""
    keys = list(keys)
    ks = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in ks)

    if not keys:
        return "the file contains no tensors"
    if has("conditioner.embedders."):
        return "looks like an SDXL checkpoint (conditioner.embedders.*); ColorizeDiffusion-XL is not supported here"
    if has("model.diffusion_model.") and has("control_encoder."):
        return "has a U-Net and sketch encoder but none of the version markers"
    if has("model.diffusion_model."):
        return "looks like a plain Stable Diffusion checkpoint (model.diffusion_model.* but no control_encoder.*)"
    if has("control_encoder.") or has("bg_encoder.") or has("thresh_embedder."):
        return "contains ColorizeDiffusion parts but no U-Net (model.diffusion_model.*): an incomplete file"
    if has("control_model.") or has("controlnet_"):
        return "looks like a ControlNet"
    if has("down_blocks.") or has("mid_block."):
        return "looks like a diffusers-format model (down_blocks.*/mid_block.*), not an LDM-format checkpoint"
    if has("visual.") or has("vision_model.") or has("text_model.") or "token_embedding.weight" in ks:
        return "looks like a CLIP model; pass it as the reference encoder (CLIP) file, not as the checkpoint"
    if has("encoder.down.") and has("decoder.up."):
        return "looks like a standalone VAE"
    if has("lora_unet_") or any(".lora_down." in k or "lora_A" in k for k in ks):
        return "looks like a LoRA file"
    return "no known ColorizeDiffusion key prefix; first keys: " + ", ".join(sorted(ks)[:4])


__all__ = [
    "COMPONENT_PREFIXES",
    "DEFAULT_OPTIONAL",
    "OPTIONAL_COMPONENTS",
    "SCHEDULE_BUFFERS",
    "component_of",
    "describe_foreign",
    "split_by_prefix",
]
