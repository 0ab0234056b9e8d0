"""Per-stage timings of the agent: rolling windows, summarised as p50/p95 for logs, state and benches."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np


class StageTimings:
    """Milliseconds per stage over the last `window` measurements."""

    def __init__(self, window: int = 500):
        self.window = window
        self._samples: dict[str, deque[float]] = {}
        self.listeners: list[Callable[[str, float], None]] = []  # e.g. the Prometheus histograms

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - start) * 1000)

    def add(self, stage: str, milliseconds: float) -> None:
        self._samples.setdefault(stage, deque(maxlen=self.window)).append(milliseconds)
        for listener in self.listeners:
            listener(stage, milliseconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {"p50": ms, "p95": ms, "n": count}} over the current window."""
        return {
            stage: {
                "p50": float(np.percentile(values, 50)),
                "p95": float(np.percentile(values, 95)),
                "n": float(len(values)),
            }
            for stage, values in self._samples.items()
            if values
        }

    def format(self) -> str:
        return ", ".join(f"{stage} {s['p50']:.1f}/{s['p95']:.1f} ms" for stage, s in self.summary().items())
