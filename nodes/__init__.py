"""ComfyUI nodes: a thin layer over ``colorize`` (socket types, tooltips, model folders, progress, Cancel).

Classic ``NODE_CLASS_MAPPINGS`` API, so every class imports and runs without ComfyUI (unit tests). Importing
this package registers ``models/colorizediffusion``, ``models/lineart`` and ``models/sams`` with ComfyUI when ComfyUI is running,
and nothing else: weights are only read or downloaded when a node that needs them runs.
"""
from __future__ import annotations

from .advanced import AttentionInjection, CropToSketch, GuidanceWindow, ReferencePad, RemoveBackground
from .decode import Decode
from .enhance import BackgroundEncode, StyleEncode
from .lineart import LineExtract
from .loaders import CheckpointLoader, ReferenceEncoderFromCLIPVision, ReferenceEncoderLoader
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
from .sketch import SketchHintsNode, SketchPreprocess

NODE_CLASS_MAPPINGS = {
    "ColorizeDiffusionCheckpointLoader": CheckpointLoader,
    "ColorizeDiffusionReferenceEncoderLoader": ReferenceEncoderLoader,
    "ColorizeDiffusionReferenceEncoderFromCLIPVision": ReferenceEncoderFromCLIPVision,
    "ColorizeDiffusionReferenceEmbed": ReferenceEmbed,
    "ColorizeDiffusionSketchPreprocess": SketchPreprocess,
    "ColorizeDiffusionSketchHints": SketchHintsNode,
    "ColorizeDiffusionSampler": Sampler,
    "ColorizeDiffusionDecode": Decode,
    "ColorizeDiffusionTextEdit": TextEdit,
    "ColorizeDiffusionControlHeatmap": ControlHeatmap,
    "ColorizeDiffusionLineExtract": LineExtract,
    "ColorizeDiffusionSketchMask": SketchMask,
    "ColorizeDiffusionSAMMask": SamMask,
    "ColorizeDiffusionMaskPreview": MaskPreview,
    "ColorizeDiffusionBackgroundEncode": BackgroundEncode,
    "ColorizeDiffusionStyleEncode": StyleEncode,
    "ColorizeDiffusionGuidanceWindow": GuidanceWindow,
    "ColorizeDiffusionAttentionInjection": AttentionInjection,
    "ColorizeDiffusionReferencePad": ReferencePad,
    "ColorizeDiffusionCropToSketch": CropToSketch,
    "ColorizeDiffusionRemoveBackground": RemoveBackground,
    "ColorizeDiffusionNativeLoader": NativeLoader,
    "ColorizeDiffusionNativeConditioning": NativeConditioning,
    "ColorizeDiffusionNativeSketch": NativeSketch,
    "ColorizeDiffusionNativeReferenceStrength": NativeReferenceStrength,
    "ColorizeDiffusionNativeEnhance": NativeEnhance,
    "ColorizeDiffusionNativeGuider": NativeGuider,
    "ColorizeDiffusionNativeSigmas": NativeSigmas,
}

# Short names: the category (ColorizeDiffusion/...) already names the pack. Distinct from each other and from
# the core nodes' display names; the node ids (keys) never change.
NODE_DISPLAY_NAME_MAPPINGS = {
    "ColorizeDiffusionCheckpointLoader": "Colorize Loader",
    "ColorizeDiffusionReferenceEncoderLoader": "Reference Encoder Loader",
    "ColorizeDiffusionReferenceEncoderFromCLIPVision": "Encoder from CLIP Vision",
    "ColorizeDiffusionReferenceEmbed": "Reference Embed",
    "ColorizeDiffusionSketchPreprocess": "Sketch Preprocess",
    "ColorizeDiffusionSketchHints": "Sketch Hints",
    "ColorizeDiffusionSampler": "Colorize Sampler",
    "ColorizeDiffusionDecode": "Colorize Decode",
    "ColorizeDiffusionTextEdit": "Text Edit",
    "ColorizeDiffusionControlHeatmap": "Control Heatmap",
    "ColorizeDiffusionLineExtract": "Line Extract",
    "ColorizeDiffusionSketchMask": "Sketch Mask",
    "ColorizeDiffusionSAMMask": "SAM Mask",
    "ColorizeDiffusionMaskPreview": "Mask Preview Overlay",
    "ColorizeDiffusionBackgroundEncode": "Background Encode",
    "ColorizeDiffusionStyleEncode": "Style Encode (v2)",
    "ColorizeDiffusionGuidanceWindow": "Guidance Window",
    "ColorizeDiffusionAttentionInjection": "Attention Injection",
    "ColorizeDiffusionReferencePad": "Reference Pad",
    "ColorizeDiffusionCropToSketch": "Crop To Sketch",
    "ColorizeDiffusionRemoveBackground": "Remove Background",
    "ColorizeDiffusionNativeLoader": "Native Loader",
    "ColorizeDiffusionNativeConditioning": "Native Conditioning",
    "ColorizeDiffusionNativeSketch": "Native Sketch",
    "ColorizeDiffusionNativeReferenceStrength": "Native Reference Strength",
    "ColorizeDiffusionNativeEnhance": "Native Enhance",
    "ColorizeDiffusionNativeGuider": "Native Guider",
    "ColorizeDiffusionNativeSigmas": "Native Sigmas",
}

register_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
