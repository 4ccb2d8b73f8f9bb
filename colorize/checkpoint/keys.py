"""Key prefixes per component, splitting a state dict, and version / parameterisation detection."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from colorize.config import (
    Parameterization,
    Version,
)
from colorize.errors import CheckpointError
from colorize.sampling.noise_schedule import BUFFER_NAMES

# Component name -> key prefix (official-implementation.md §5.2). Order matters only for
# readability; no prefix is a prefix of another one.
COMPONENT_PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "sketch_encoder": "control_encoder.",
    "vae": "first_stage_model.",
    "clip_visual": "cond_stage_model.visual.model.",
    "clip_text": "cond_stage_model.transformer.model.",
    "thresh_embedder": "thresh_embedder.",
    "transformer": "transformer.",
    "bg_encoder": "bg_encoder.",
    "style_encoder": "style_encoder.",
}
SCHEDULE_BUFFERS: tuple[str, ...] = BUFFER_NAMES
COMPONENTS: tuple[str, ...] = (*COMPONENT_PREFIXES, "schedule", "unexpected")
OPTIONAL_COMPONENTS: tuple[str, ...] = ("clip_visual", "clip_text", "schedule")
# CLIP comes from its own file and the schedule buffers are recomputed (§5.1): never required.
DEFAULT_OPTIONAL: tuple[str, ...] = (
    COMPONENT_PREFIXES["clip_visual"],
    COMPONENT_PREFIXES["clip_text"],
    *SCHEDULE_BUFFERS,
)
PARAMETERIZATION: dict[str, Parameterization] = {"mult": "eps", "switch": "eps", "v2": "v"}
VERSION_TITLES = {
    "mult": "ColorizeDiffusion v1 (mult)",
    "switch": "ColorizeDiffusion v1.5 (switch)",
    "v2": "ColorizeDiffusion v2",
}

# --------------------------------------------------------------------------------------------
# Keys: split, version, parameterisation
# --------------------------------------------------------------------------------------------


def component_of(key: str) -> str:
    """Which component a full state-dict key belongs to (``"unexpected"`` if none)."""
    for name, prefix in COMPONENT_PREFIXES.items():
        if key.startswith(prefix):
            return name
    return "schedule" if key in SCHEDULE_BUFFERS else "unexpected"


def split_by_prefix(sd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Split a state dict (or key->shape map) into components, prefixes stripped.

    Every name in :data:`COMPONENTS` is present (possibly empty). ``schedule`` and
    ``unexpected`` keep their full key names.
    """
    parts: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
    for k, v in sd.items():
        c = component_of(k)
        prefix = COMPONENT_PREFIXES.get(c, "")
        parts[c][k[len(prefix):]] = v
    return parts


def _describe_foreign(keys: list[str]) -> str:
    """A short guess of what a non-ColorizeDiffusion state dict is."""
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


def detect_version(keys_or_shapes: Iterable[str] | Mapping[str, Any], source: str | None = None) -> Version:
    """``"mult"``, ``"switch"`` or ``"v2"`` from the key names alone (official-implementation.md §5.2).

    With U-Net keys present: ``bg_encoder.*``/``style_encoder.*``/``warp_modules`` => v2;
    ``thresh_embedder.*``, ``transformer.{embedding,layers}`` or ``lora_down_bg`` => switch;
    ``control_encoder.*`` => mult. Anything else raises :class:`CheckpointError` describing what
    the file looks like (an open_clip file's ``transformer.resblocks.*`` is not a switch marker).
    """
    keys = list(keys_or_shapes.keys() if isinstance(keys_or_shapes, Mapping) else keys_or_shapes)
    unet = any(k.startswith("model.diffusion_model.") for k in keys)
    if unet and any(
        k.startswith(("bg_encoder.", "style_encoder.")) or ".warp_modules." in k or ".style_modules." in k for k in keys
    ):
        return "v2"
    switch_prefixes = ("thresh_embedder.", "transformer.embedding", "transformer.layers.")
    if unet and any(k.startswith(switch_prefixes) or ".lora_down_bg." in k for k in keys):
        return "switch"
    if unet and any(k.startswith("control_encoder.") for k in keys):
        return "mult"
    what = f"{source} is" if source else "this file is"
    raise CheckpointError(
        f"{what} not a ColorizeDiffusion checkpoint: {_describe_foreign(keys)}. A ColorizeDiffusion "
        "checkpoint has U-Net (model.diffusion_model.*) and sketch-encoder (control_encoder.*) keys; v1.5 adds "
        "thresh_embedder.*/transformer.*, v2 adds bg_encoder.*/style_encoder.*. The released files are "
        "listed in weights_manifest.json (`python -m colorize download --list`)."
    )


def parameterization_for(version: str) -> Parameterization:
    """Prediction target by version: v2 -> ``"v"``, mult/switch -> ``"eps"`` (§1.1)."""
    return PARAMETERIZATION[version]
