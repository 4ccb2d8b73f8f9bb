"""Every test in this folder runs in the real ComfyUI host: skipped without the harness, failed under CI."""
from __future__ import annotations

import pytest
from _helpers import skip_or_fail
from harness import harness_missing


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/host/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def comfy_harness() -> None:
    reason = harness_missing()
    if reason:
        skip_or_fail(reason)
