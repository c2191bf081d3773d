"""Per-process worker state: settings, sessions and one model runtime per model, built lazily."""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.orm import Model
from app.queueing import Publisher
from app.settings import Settings
from app.storage import Storage
from workers.runtime.onnx import default_threads, load_model


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    publisher: Publisher
    threads: int
    require_gpu: bool = False
    models: dict[uuid.UUID, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, session: Session, model_id: uuid.UUID):
        """The runtime for a model row, loaded once per process and reused."""
        with self._lock:
            runtime = self.models.get(model_id)
            if runtime is None:
                row = session.get(Model, model_id)
                runtime = load_model(Storage.read_bytes(row.uri), row.signature, row.processing,
                                     threads=self.threads, require_gpu=self.require_gpu)
                self.models[model_id] = runtime
            return runtime


_contexts: dict[int, WorkerContext] = {}


def worker_context(settings: Settings, require_gpu: bool = False) -> WorkerContext:
    """One context per process id, so that forked children never share a connection pool."""
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        engine = make_engine(settings, pool_size=2, max_overflow=2)
        context = WorkerContext(settings=settings, sessions=make_sessionmaker(engine),
                                publisher=Publisher(settings),
                                threads=settings.ort_threads or default_threads(
                                    settings.effective_concurrency),
                                require_gpu=require_gpu)
        _contexts.clear()
        _contexts[pid] = context
    return context
