"""A model runtime wrapped so that every call is timed and counted; the predict code stays plain."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app import tracing
from app.metrics import ModelMeter

PROVIDER_LABELS = {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}


class MeteredModel:
    """Records rows, seconds and outcome of each `run` / `run_features` call of `runtime`.

    `run_features` exists here only when the runtime has it, because callers choose their path
    with `hasattr`. Every other attribute is the runtime's.
    """

    def __init__(self, runtime: Any, model: str):
        self.runtime, self._model_name = runtime, model
        providers = getattr(runtime, "providers", None) or ["unknown"]
        self.meter = ModelMeter(model, PROVIDER_LABELS.get(providers[0], providers[0]))
        self.run = self._metered(runtime.run)
        if hasattr(runtime, "run_features"):
            self.run_features = self._metered(runtime.run_features)
        if hasattr(runtime, "run_arrays"):
            self.run_arrays = self._metered(runtime.run_arrays)

    def _metered(self, call: Callable[[Any], list]) -> Callable[[Any], list]:
        def metered(batch):
            started = time.perf_counter()
            try:
                with tracing.span("kiln.model.run", links=tracing.batch_links(), rows=len(batch),
                                  model=self._model_name):
                    outputs = call(batch)
            except Exception:
                self.meter.record(len(batch), time.perf_counter() - started, ok=False)
                raise
            self.meter.record(len(batch), time.perf_counter() - started, ok=True)
            return outputs

        return metered

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)
