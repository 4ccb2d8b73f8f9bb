"""ColorizeDiffusion: reference-based anime line-art colorization (pure PyTorch core).

No ComfyUI import anywhere in this package; the ComfyUI nodes live in ``nodes/``.
"""
__version__ = "0.1.0"
