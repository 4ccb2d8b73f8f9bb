"""Project rules that the code itself must keep: no ComfyUI in the core, no hard-coded devices, safe loading."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = [p for d in ("colorize", "training") for p in (REPO / d).rglob("*.py")]


def test_core_never_imports_comfyui() -> None:
    pat = re.compile(r"^\s*(import|from)\s+(comfy|comfy_extras|comfy_api|folder_paths|server|nodes)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in CORE if pat.search(p.read_text())]
    assert not offenders, f"ComfyUI imported from the core: {offenders}"


def test_no_hard_coded_cuda_calls() -> None:
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    offenders = [str(p.relative_to(REPO)) for p in sources if ".cuda()" in p.read_text()]
    assert not offenders, f".cuda() calls (use .to(device)): {offenders}"


def test_torch_load_always_weights_only() -> None:
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    for p in sources:
        for line in p.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{p.relative_to(REPO)}: {line.strip()}"


def test_requirements_never_list_torch() -> None:
    names = [re.split(r"[<>=\[ ;]", line.strip())[0].lower() for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert not {"torch", "torchvision", "torchaudio"} & set(names)
