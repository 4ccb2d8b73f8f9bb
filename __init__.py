"""ComfyUI entry point for the ColorizeDiffusion node pack.

ComfyUI imports this folder as a package; the nodes themselves live in ``nodes/`` and the
model code in ``colorize/`` (pure PyTorch, usable without ComfyUI).
"""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
