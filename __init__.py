"""ComfyUI entry point of the ColorizeDiffusion node pack (V3 node schema: ``comfy_entrypoint``).

ComfyUI imports this folder from ``custom_nodes/`` under a module name made from its path, so the pack's
own library ``colorize`` is made importable by putting this folder on ``sys.path``. The nodes live in
``nodes/`` and the model code in ``colorize/`` (plain PyTorch, usable without ComfyUI).
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.insert(0, _PACK_DIR)

_colorize = sys.modules.get("colorize")
_own = os.path.realpath(os.path.join(_PACK_DIR, "colorize"))
if _colorize is not None and not os.path.realpath(getattr(_colorize, "__file__", "") or "").startswith(_own):
    raise ImportError(
        f"another module named 'colorize' is already imported ({getattr(_colorize, '__file__', '?')}); "
        f"the ColorizeDiffusion pack needs its own ({os.path.join(_PACK_DIR, 'colorize')})"
    )

# No NODE_CLASS_MAPPINGS here: ComfyUI takes a module that has one for a classic-API pack and never calls
# comfy_entrypoint (nodes.py, load_custom_node).
if __package__:  # a tool scanning the repository may load this file as a plain module: no relative imports
    from .nodes import comfy_entrypoint

# Served by ComfyUI as the pack's frontend folder: docs/<node id>.md are the node help pages
# (written by web/make_node_docs.py), shown in the node library's documentation panel.
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
