"""A dependency-free terminal progress bar for the CLI (ComfyUI uses its own)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``bar = ProgressBar(total, "sampling"); bar.update(); bar.close()`` — writes to stderr."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.label, self.width = max(1, total), label, width
        self.stream = stream or sys.stderr
        self.n, self.start = 0, time.perf_counter()
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n = min(self.total, self.n + n)
        self._draw()

    def _draw(self) -> None:
        done = int(self.width * self.n / self.total)
        elapsed = time.perf_counter() - self.start
        rate = f"{elapsed / self.n:.2f}s/it" if self.n else ""
        self.stream.write(f"\r{self.label} [{'#' * done}{'.' * (self.width - done)}] {self.n}/{self.total} {rate}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
