"""Project rules that the code itself must keep: no ComfyUI in the core, no hard-coded devices, safe loading."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _project_sources() -> list[Path]:
    """The project's own Python files: tracked by git when possible (scratch folders don't count)."""
    try:
        out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = [REPO / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts]
    return [p for p in files if p.is_file()]


SOURCES = [p for p in _project_sources() if "tests" not in p.relative_to(REPO).parts]
CORE = [p for p in SOURCES if p.relative_to(REPO).parts[0] in ("colorize", "training")]


def test_core_never_imports_comfyui() -> None:
    pat = re.compile(r"^\s*(import|from)\s+(comfy|comfy_extras|comfy_api|folder_paths|server|nodes)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in CORE if pat.search(p.read_text())]
    assert not offenders, f"ComfyUI imported from the core: {offenders}"


def test_no_hard_coded_cuda_calls() -> None:
    offenders = [str(p.relative_to(REPO)) for p in SOURCES if ".cuda()" in p.read_text()]
    assert not offenders, f".cuda() calls (use .to(device)): {offenders}"


def test_torch_load_always_weights_only() -> None:
    for p in SOURCES:
        for line in p.read_text().splitlines():
            if "torch." + "load(" in line:  # (split so this line does not match itself)
                assert "weights_only=True" in line, f"{p.relative_to(REPO)}: {line.strip()}"


def test_requirements_never_list_torch() -> None:
    names = [re.split(r"[<>=\[ ;]", line.strip())[0].lower() for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert not {"torch", "torchvision", "torchaudio"} & set(names)
