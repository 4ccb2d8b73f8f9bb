"""The model families and their registry: one folder per family, one line per family in :data:`FAMILIES`.

=========  ==========  ===================================================  ====================
name       label       what it is (thesis)                                   folder
=========  ==========  ===================================================  ====================
``mult``   v1          reference tokens in cross-attention, sketch hints      ``families/v1/``
                       (§5.3)
``switch`` v1.5        + split fg/bg cross-attention with LoRA, background    ``families/v15/``
                       transformer, masks (§5.5)
``v2``     v2          + background and style encoders, skip warping,         ``families/v2/``
                       style modulation, v-prediction (§5.6)
``sdxl``   XL          ColorizeDiffusion XL: SDXL U-Net, CLIP-bigG + WD       ``families/xl/``
                       tagger tokens, multi-scale sketch encoder (1024 px)
``xlv2``   XL v2       + ReferenceNet background encoder, background LoRA     ``families/xl/``
``gan``    GAN         the chapter-4 GAN: tag-pretrained ResNet-34, attention ``families/gan/``
                       / RBCA generator, tag edits (§4; standalone: its own
                       colorizer, no diffusion)
=========  ==========  ===================================================  ====================

``name`` is the official checkpoint prefix (``mult-eps-ft``, ``switch-eps``, ``v2-full``) and the
``ColorizerConfig.version`` of a loaded model; ``label`` is what the UI and the docs call it. The family of a
file is decided from its keys, never from its name (the config our own exports store in their metadata supplies
what shapes cannot show: ``colorize.loader.checkpoint_config``). Adding a family:
write its folder (a :class:`~colorize.families.base.Family` subclass and what only it needs) and add it to
:data:`FAMILIES`. Detection asks the families from the last to the first: a family's markers may include those
of the families before it (a v2 file has v1.5's LoRA keys and v1's sketch encoder), never of those after it.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from colorize.checkpoint.keys import COMPONENT_PREFIXES, describe_foreign, split_by_prefix
from colorize.errors import CheckpointError
from colorize.families.base import Family, SeparationInputs, TrainingStart, UNetInputs
from colorize.families.gan import GAN
from colorize.families.v1 import V1
from colorize.families.v2 import V2
from colorize.families.v15 import V15
from colorize.families.xl import SDXL, XLV2

#: Every family by name (:func:`detect_family` asks them from the last to the first: an XL file also carries
#: v1's markers, an xlv2 file v2's ``bg_encoder.*``).
FAMILIES: dict[str, Family] = {f.name: f for f in (V1, V15, V2, SDXL, XLV2, GAN)}


def get_family(name: str) -> Family:
    """The family registered as ``name`` (``mult``, ``switch``, ``v2``, ``sdxl``, ``xlv2``, ``gan``); a clear
    error for others."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise CheckpointError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def component_prefixes() -> dict[str, str]:
    """Key prefix of every checkpoint component: the shared ones, then each family's own."""
    out = dict(COMPONENT_PREFIXES)
    for family in FAMILIES.values():
        out.update(family.components)
    return out


def split_checkpoint(sd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A state dict (or key → shape map) split into components with every family's prefixes (stripped)."""
    return split_by_prefix(sd, component_prefixes())


def detect_family(keys: Collection[str] | Mapping[str, Any], source: str | None = None) -> Family:
    """The family of a checkpoint from its key names: the last of :data:`FAMILIES` whose markers it has (a
    family's markers may include those of the families before it). A file without any raises
    :class:`~colorize.errors.CheckpointError` saying what it looks like."""
    keys = list(keys.keys() if isinstance(keys, Mapping) else keys)
    for family in reversed(FAMILIES.values()):
        if family.matches(keys):
            return family
    what = f"{source} is" if source else "this file is"
    markers = "; ".join(f"{f.label} adds {', '.join(p + '*' for p in f.components.values())}"
                        for f in FAMILIES.values() if f.components)
    raise CheckpointError(
        f"{what} not a ColorizeDiffusion checkpoint: {describe_foreign(keys)}. A ColorizeDiffusion checkpoint has "
        f"U-Net (model.diffusion_model.*) and sketch-encoder (control_encoder.*) keys; {markers}. The released "
        "files are listed in weights_manifest.json (`python -m colorize download --list`)."
    )


__all__ = [
    "FAMILIES",
    "Family",
    "SeparationInputs",
    "TrainingStart",
    "UNetInputs",
    "component_prefixes",
    "detect_family",
    "get_family",
    "split_checkpoint",
]
