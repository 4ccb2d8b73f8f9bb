"""Shared test helpers: where the official fixtures are, a CI-aware skip, tiny colorizers of every version."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from _helpers import COMFY_DIR, skip_or_fail, tiny_colorizer

REPO = Path(__file__).resolve().parents[1]

# The nodes import ComfyUI's comfy_api (nodes/schema.py): from the harness's ComfyUI tree unless one is named.
if (COMFY_DIR / "comfy_api").is_dir():
    os.environ.setdefault("COMFYUI_DIR", str(COMFY_DIR))


def fixtures_dir() -> Path | None:
    """``$COLORIZE_FIXTURES`` or ``../shared/fixtures/official`` next to the checkout."""
    env = os.environ.get("COLORIZE_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "fixtures" / "official")
    for c in candidates:
        if c.is_dir() and any(c.glob("*.json")):
            return c
    return None


def layouts_dir() -> Path | None:
    env = os.environ.get("COLORIZE_LAYOUTS")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "layouts"]:
        if c.is_dir() and any(c.glob("keys_*.json")):
            return c
    return None


def _require(path: Path | None, what: str, how: str) -> Path:
    if path is not None:
        return path
    skip_or_fail(f"{what} not found: {how}")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return _require(
        fixtures_dir(),
        "official golden fixtures",
        "set COLORIZE_FIXTURES to a folder of <name>.json + <name>.safetensors fixtures "
        "(the project's shared/fixtures/official) or place it at ../shared/fixtures/official",
    )


@pytest.fixture(scope="session")
def layout_dir() -> Path:
    return _require(
        layouts_dir(),
        "official key layouts",
        "set COLORIZE_LAYOUTS to the folder holding keys_{mult,switch,v2}.json "
        "(the project's shared/layouts) or place it at ../shared/layouts",
    )


@pytest.fixture(scope="module")
def single_thread():  # type: ignore[no-untyped-def]
    """Tiny models run fastest single-threaded (and other test files may run at the same time)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


VERSIONS = ("mult", "switch", "v2", "sdxl", "xlv2")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One tiny random-weight :class:`~colorize.pipeline.Colorizer` per family (CPU), shared by the tests."""
    from colorize.tiny import write_tiny_weights

    d = tmp_path_factory.mktemp("tiny-colorizers")
    write_tiny_weights(d, versions=VERSIONS)
    return {v: tiny_colorizer(d, v) for v in VERSIONS}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A :class:`fake_hub.FakeHub` on 127.0.0.1 as the Hub endpoint (``HF_ENDPOINT``), downloads allowed, a 2 s
    stall timeout."""
    from fake_hub import FakeHub

    from colorize import weights

    for name in weights.OFFLINE_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLORIZE_DOWNLOAD_TIMEOUT", "2")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
