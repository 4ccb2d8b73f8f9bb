"""The native ComfyUI bridge: a ColorizeDiffusion checkpoint as ComfyUI's own SD2.x MODEL and VAE, with the
colorizer's parts applied through the host's patch points, for core samplers, LoRA loaders and model merging.

* :mod:`.model` — the native MODEL / VAE and the colorizer's modules beside them;
* :mod:`.loader` — Native Loader, Native Conditioning;
* :mod:`.model_patches` — Native Sketch, Native Reference Strength, Native Enhance (they patch the MODEL);
* :mod:`.patches`, :mod:`.decoder` — the callables those nodes install;
* :mod:`.guider` — Native Guider (dual CFG), Native Sigmas.
"""
from __future__ import annotations

from .guider import NativeGuider, NativeSigmas
from .loader import NativeConditioning, NativeLoader
from .model_patches import NativeEnhance, NativeReferenceStrength, NativeSketch

__all__ = ["NativeConditioning", "NativeEnhance", "NativeGuider", "NativeLoader", "NativeReferenceStrength",
           "NativeSigmas", "NativeSketch"]
