"""Prometheus for `kiln worker`: one endpoint in the main process that adds up its own metrics
(reconciler, webhook dispatcher) and those of every prefork child (prometheus_client
multiprocess mode)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from celery import signals

from app.cli import multiprocess_metrics
from app.settings import Settings


@contextmanager
def worker_metrics(settings: Settings) -> Iterator[None]:
    """Around the Celery worker's run, in the main process before any child forks: with
    KILN_WORKER_METRICS_PORT set, a fresh multiprocess folder and `GET /metrics` on that port."""
    port = settings.worker_metrics_port
    with multiprocess_metrics("worker") if port else nullcontext():
        from prometheus_client import start_http_server

        from app import metrics

        metrics.hold_across_forks()
        if port:
            start_http_server(port, settings.worker_metrics_host,
                              registry=metrics.scrape_registry())
            signals.worker_process_shutdown.connect(forget_child, weak=False)
        yield


def forget_child(pid: int | None = None, **_kwargs) -> None:
    """Celery's worker_process_shutdown, sent in a prefork child as it exits."""
    from app.metrics import mark_process_dead

    mark_process_dead(pid or os.getpid())
