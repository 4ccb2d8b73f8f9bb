"""ComfyUI nodes: a thin layer over ``colorize`` (socket types, tooltips, model folders, progress, Cancel).

Written against ComfyUI's V3 node schema (``io.ComfyNode``, pinned API version in :mod:`nodes.schema`): each
class declares its node id, display name, inputs and outputs in ``define_schema`` and computes in ``execute``.
ComfyUI loads them through :func:`comfy_entrypoint` (re-exported by the pack's root ``__init__.py``).
Importing this package registers its model folders (``models/colorizediffusion``, ``colorizediffusion_gan``,
``lineart``, ``sams``, ``isnet``, ``wd_tagger``) with ComfyUI when ComfyUI is running, and nothing else: weights are only read or
downloaded when a node that needs them runs.
"""
from __future__ import annotations

from .advanced import AttentionInjection, CropToSketch, GuidanceWindow, ReferencePad, RemoveBackground, XLLevelRule
from .decode import Decode
from .enhance import BackgroundEncode, StyleEncode
from .gan import GANColorize, GANLoader, GANReference, GANTagEdit
from .isnet_masks import AnimeMask, SketchMaskIsnet
from .lineart import LineExtract
from .loaders import (
    CheckpointLoader,
    ReferenceEncoderFromCLIPVision,
    ReferenceEncoderLoader,
    XLReferenceEncoderFromCLIPVision,
    XLReferenceEncoderLoader,
)
from .manipulation import ControlHeatmap, TextEdit
from .masks import MaskPreview, SamMask, SketchMask
from .models import register_folders
from .native import (
    NativeConditioning,
    NativeEnhance,
    NativeGuider,
    NativeLoader,
    NativeReferenceStrength,
    NativeSigmas,
    NativeSketch,
)
from .reference import ReferenceEmbed
from .sampler import Sampler
from .schema import ComfyExtension, io
from .sketch import SketchHintsNode, SketchPreprocess

#: Every node of the pack, in the order of the node library (loaders, sketch, sampling, edits, masks,
#: separation, advanced, native bridge, the chapter-4 GAN).
NODES: tuple[type[io.ComfyNode], ...] = (
    CheckpointLoader, ReferenceEncoderLoader, ReferenceEncoderFromCLIPVision, XLReferenceEncoderLoader,
    XLReferenceEncoderFromCLIPVision, ReferenceEmbed,
    SketchPreprocess, SketchHintsNode, Sampler, Decode,
    TextEdit, ControlHeatmap, LineExtract,
    AnimeMask, SketchMaskIsnet, SketchMask, SamMask, MaskPreview, BackgroundEncode, StyleEncode,
    GuidanceWindow, AttentionInjection, XLLevelRule, ReferencePad, CropToSketch, RemoveBackground,
    NativeLoader, NativeConditioning, NativeSketch, NativeReferenceStrength, NativeEnhance, NativeGuider,
    NativeSigmas,
    GANLoader, GANReference, GANTagEdit, GANColorize,
)

register_folders()  # before any define_schema: the file pickers list these folders

#: Node id → class and node id → display name, as ComfyUI registers them (ids never change: saved
#: workflows refer to them).
_SCHEMAS = [cls.define_schema() for cls in NODES]  # once: the loaders' schemas list the model folders
NODE_CLASSES: dict[str, type[io.ComfyNode]] = {schema.node_id: cls for schema, cls in zip(_SCHEMAS, NODES)}
DISPLAY_NAMES: dict[str, str] = {schema.node_id: schema.display_name for schema in _SCHEMAS}


class ColorizeDiffusionExtension(ComfyExtension):
    """The pack as a V3 extension: its nodes (the model folders are registered when the package is imported)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ColorizeDiffusionExtension:
    """What ComfyUI calls to load the pack (V3 extension entry point)."""
    return ColorizeDiffusionExtension()


__all__ = ["DISPLAY_NAMES", "NODES", "NODE_CLASSES", "ColorizeDiffusionExtension", "comfy_entrypoint"]
