"""The ComfyUI node API this pack is written against: the V3 schema of ``comfy_api`` (``io.ComfyNode`` with
``define_schema`` / ``execute``, loaded through ``comfy_entrypoint``), pinned to API version ``0.0.2`` — the
newest numbered version ComfyUI 0.3.64 ships (``comfy_api/version_list.py``), where ``latest`` may change
under us.

Inside ComfyUI ``comfy_api`` is always importable. Tools and tests that import the nodes outside a running
ComfyUI name a ComfyUI source tree in ``COMFYUI_DIR`` (the tests use the harness's); importing ``comfy_api``
does not start ComfyUI (no model management, no server), so the node classes still run on plain PyTorch there.
"""
from __future__ import annotations

import os
import sys
from typing import Any

API_VERSION = "0.0.2"
COMFYUI_DIR_ENV = "COMFYUI_DIR"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")  # inputs the frontend draws as widgets


def _import_api() -> tuple[Any, Any, Any]:
    try:
        from comfy_api.v0_0_2 import ComfyExtension, io, ui
    except ModuleNotFoundError as e:
        source = os.environ.get(COMFYUI_DIR_ENV, "")
        if e.name not in ("comfy_api", "comfy_api.v0_0_2") or not source or source in sys.path:
            raise ImportError(
                f"the ColorizeDiffusion nodes need ComfyUI's comfy_api (API version {API_VERSION}, ComfyUI 0.3.64 or "
                f"newer): run them inside ComfyUI, or set {COMFYUI_DIR_ENV} to a ComfyUI source tree ({e})"
            ) from e
        sys.path.append(source)
        return _import_api()
    return ComfyExtension, io, ui


ComfyExtension, io, ui = _import_api()


def output(kind: Any, name: str, tooltip: str, id: str | None = None) -> Any:
    """An output socket shown (and listed by ``/object_info``) as ``name``; its id is ``name`` too unless an
    input has that id already (a node that patches its ``model`` input returns ``model``: ids must differ)."""
    return kind.Output(id or name, display_name=name, tooltip=tooltip)


__all__ = ["API_VERSION", "COMFYUI_DIR_ENV", "WIDGET_TYPES", "ComfyExtension", "io", "output", "ui"]
