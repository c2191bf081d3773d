"""Per-process worker state: settings, sessions and one model runtime per model, built lazily."""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.queueing.endings import Endings
from app.domain.batching import rows_per_batch
from app.orm import Model
from app.queueing.drains import DrainFlags
from app.queueing.publisher import Publisher
from app.settings import Settings
from app.storage import Storage
from workers.runtime.metered import MeteredModel
from workers.runtime.onnx import GPU_PROVIDER, choose_providers, default_threads, load_model


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    publisher: Publisher
    threads: int
    require_gpu: bool = False
    on_gpu: bool = False
    drains: DrainFlags | None = None
    models: dict[uuid.UUID, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, session: Session, model_id: uuid.UUID):
        """The runtime for a model row, loaded once per process and reused."""
        with self._lock:
            runtime = self.models.get(model_id)
            if runtime is None:
                row = session.get(Model, model_id)
                runtime = MeteredModel(
                    load_model(Storage.read_bytes(row.uri), row.signature, row.processing,
                               threads=self.threads, require_gpu=self.require_gpu), row.name)
                self.models[model_id] = runtime
            return runtime

    def batch_size(self, processing: dict[str, Any]) -> int:
        """Rows per model call for a model's processing spec on this worker's device."""
        return rows_per_batch(processing, on_gpu=self.on_gpu, cpu_default=self.settings.tuning.batch_size,
                              gpu_default=self.settings.tuning.gpu_batch_size)


_contexts: dict[int, WorkerContext] = {}


def worker_context(settings: Settings, require_gpu: bool = False) -> WorkerContext:
    """One context per process id, so that forked children never share a connection pool."""
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        engine = make_engine(settings, name="kiln-worker", pool_size=2, max_overflow=2)
        Endings.install(settings.redis_url)  # wakes API requests waiting for the jobs it ends
        context = WorkerContext(settings=settings, sessions=make_sessionmaker(engine),
                                publisher=Publisher(settings),
                                drains=DrainFlags(settings.redis_url),
                                threads=settings.ort_threads or default_threads(
                                    settings.effective_concurrency),
                                require_gpu=require_gpu,
                                on_gpu=GPU_PROVIDER in choose_providers(require_gpu))
        _contexts.clear()
        _contexts[pid] = context
    return context
