"""A model wrapped so that one run can read how long its model calls took: its usage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class ClockedModel:
    """Adds the wall time of each `run` / `run_features` call of `model` to a running total.

    One per scoring run (never shared between threads); `lap()` reads the seconds since the
    last lap. Like `MeteredModel`, `run_features` exists only when the model has it.
    """

    def __init__(self, model: Any):
        self.model, self.seconds, self._lapped = model, 0.0, 0.0
        self.run = self._clocked(model.run)
        if hasattr(model, "run_features"):
            self.run_features = self._clocked(model.run_features)
        if hasattr(model, "run_arrays"):
            self.run_arrays = self._clocked(model.run_arrays)

    def _clocked(self, call: Callable[[Any], list]) -> Callable[[Any], list]:
        def clocked(batch):
            started = time.perf_counter()
            try:
                return call(batch)
            finally:
                self.seconds += time.perf_counter() - started

        return clocked

    def lap(self) -> float:
        """Model seconds since the previous lap (or since the start)."""
        lapped, self._lapped = self.seconds - self._lapped, self.seconds
        return lapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
