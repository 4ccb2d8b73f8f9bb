"""Where the real ComfyUI host is and how the host tests reach it (one place for every test in this folder).

The harness environment is ``$COMFY_HOME`` (default ``~/.cache/comfyui-harness``) with ``ComfyUI/main.py`` and
``venv/bin/python`` (this pack's requirements installed into that venv), built by the harness's
``setup_env.sh``; its scripts are ``$COMFYUI_HARNESS`` (default ``../shared/tools/comfyui-harness``).
``.ci/run`` builds it. Without it the host tests skip with the reason, and fail under ``CI=true``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from _helpers import COMFY_DIR, COMFY_HOME, COMFY_PY, REPO

HARNESS = Path(os.environ.get("COMFYUI_HARNESS", REPO.parent / "shared" / "tools" / "comfyui-harness"))
PACK_DEPS = "import open_clip, safetensors, einops, huggingface_hub, numpy, PIL"


def harness_missing() -> str | None:
    """Why the host tests cannot run here, or None when they can."""
    if not (COMFY_DIR / "main.py").is_file() or not COMFY_PY.exists():
        return (f"no ComfyUI harness environment at {COMFY_HOME} (needs ComfyUI/main.py and venv/bin/python; "
                "set COMFY_HOME or build it with the harness's setup_env.sh, as .ci/run does)")
    if not (HARNESS / "run_workflow.py").is_file():
        return f"harness scripts not found at {HARNESS} (set COMFYUI_HARNESS)"
    probe = subprocess.run([str(COMFY_PY), "-c", PACK_DEPS], capture_output=True, text=True, check=False)
    if probe.returncode:
        return (f"the harness venv lacks this pack's dependencies ({probe.stderr.strip().splitlines()[-1]}); run "
                f"{COMFY_HOME}/venv/bin/pip install -r requirements.txt")
    return None


def run_harness(*args: str, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    """Run the harness's ``run_workflow.py`` on this pack; returns (exit code, parsed SUMMARY, full output)."""
    proc = subprocess.run([str(COMFY_PY), str(HARNESS / "run_workflow.py"), "--pack", str(REPO), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    line = next((l for l in reversed(out.splitlines()) if l.startswith("SUMMARY ")), None)
    assert line is not None, f"no SUMMARY line from the harness:\n{out[-4000:]}"
    print(line)
    return proc.returncode, json.loads(line[len("SUMMARY "):]), out


def harness_module() -> ModuleType:
    """The harness's ``run_workflow.py`` as a module (its server helpers: free_port, http_json, ...)."""
    spec = importlib.util.spec_from_file_location("comfy_harness_run_workflow", HARNESS / "run_workflow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def comfy_server(work: Path, models_dir: Path, extra_args: tuple[str, ...] = ()) -> Iterator[tuple[str, Path]]:
    """A ComfyUI server with this pack, started the way the harness starts it (own custom_nodes, input, output,
    temp and user folders under ``work``, the models of ``models_dir``, no network); yields (base URL, log path)
    and stops only the process it started."""
    h = harness_module()
    for sub in ("custom_nodes", "input", "output", "temp", "user"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "custom_nodes" / "colorizediffusion").symlink_to(REPO, target_is_directory=True)
    for name in ("colorizediffusion_sketch.png", "colorizediffusion_reference.png"):
        (work / "input" / name).write_bytes((REPO / "workflows" / name).read_bytes())
    yaml = work / "extra_model_paths.yaml"
    h.write_extra_paths_yaml(yaml, work / "custom_nodes", models_dir)
    port = h.free_port()
    log = work / "comfyui.log"
    cmd = [str(COMFY_PY), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--dont-print-server", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
           "--input-directory", str(work / "input"), "--output-directory", str(work / "output"),
           "--temp-directory", str(work / "temp"), "--user-directory", str(work / "user"),
           "--extra-model-paths-config", str(yaml), *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=logf, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if h.http_json(base + "/system_stats", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.25)
            else:
                raise RuntimeError(f"ComfyUI did not start:\n{log.read_text()[-3000:]}")
            yield base, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
