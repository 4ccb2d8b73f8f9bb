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

NODE_DISPLAY_NAME_MAPPINGS = {
    "ColorizeDiffusionCheckpointLoader": "ColorizeDiffusion Checkpoint Loader",
    "ColorizeDiffusionReferenceEncoderLoader": "ColorizeDiffusion Reference Encoder Loader",
    "ColorizeDiffusionReferenceEncoderFromCLIPVision": "ColorizeDiffusion Reference Encoder from CLIP Vision",
    "ColorizeDiffusionReferenceEmbed": "ColorizeDiffusion Reference Embed",
    "ColorizeDiffusionSketchPreprocess": "ColorizeDiffusion Sketch Preprocess",
    "ColorizeDiffusionSketchHints": "ColorizeDiffusion Sketch Hints",
    "ColorizeDiffusionSampler": "ColorizeDiffusion Sampler",
    "ColorizeDiffusionDecode": "ColorizeDiffusion Decode",
    "ColorizeDiffusionTextEdit": "ColorizeDiffusion Text Edit",
    "ColorizeDiffusionControlHeatmap": "ColorizeDiffusion Control Heatmap",
    "ColorizeDiffusionLineExtract": "ColorizeDiffusion Line Extract",
    "ColorizeDiffusionSketchMask": "ColorizeDiffusion Sketch Mask",
    "ColorizeDiffusionSAMMask": "ColorizeDiffusion SAM Mask",
    "ColorizeDiffusionMaskPreview": "ColorizeDiffusion Mask Preview",
    "ColorizeDiffusionBackgroundEncode": "ColorizeDiffusion Background Encode (BG/FG enhance)",
    "ColorizeDiffusionStyleEncode": "ColorizeDiffusion Style Encode (v2)",
    "ColorizeDiffusionGuidanceWindow": "ColorizeDiffusion Guidance Window",
    "ColorizeDiffusionAttentionInjection": "ColorizeDiffusion Attention Injection",
    "ColorizeDiffusionReferencePad": "ColorizeDiffusion Reference Pad",
    "ColorizeDiffusionCropToSketch": "ColorizeDiffusion Crop To Sketch",
    "ColorizeDiffusionRemoveBackground": "ColorizeDiffusion Remove Background",
    "ColorizeDiffusionNativeLoader": "ColorizeDiffusion Native Loader (MODEL + VAE)",
    "ColorizeDiffusionNativeConditioning": "ColorizeDiffusion Native Conditioning",
    "ColorizeDiffusionNativeSketch": "ColorizeDiffusion Native Sketch (patch MODEL)",
    "ColorizeDiffusionNativeReferenceStrength": "ColorizeDiffusion Native Reference Strength (patch MODEL)",
    "ColorizeDiffusionNativeEnhance": "ColorizeDiffusion Native Enhance (v1.5/v2, patch MODEL)",
    "ColorizeDiffusionNativeGuider": "ColorizeDiffusion Native Guider (dual CFG)",
    "ColorizeDiffusionNativeSigmas": "ColorizeDiffusion Native Sigmas",
}

register_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
