"""`kiln api`: serve the HTTP API."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import click

from app.cli.base import settings_from
from app.cpus import apply_cpu_policy


@click.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the HTTP API (granian: KILN_API_WORKERS processes of KILN_API_THREADS threads)."""
    from app.server import ApiServer

    settings = settings_from(ctx)
    apply_cpu_policy(settings.tuning.cpu_policy)  # before granian starts its processes and threads
    with multiprocess_metrics("api") if settings.metrics_enabled else nullcontext():
        ApiServer(settings, host or settings.api_host, port or settings.api_port).run()


@contextmanager
def multiprocess_metrics(name: str) -> Iterator[Path]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this process and the processes it forks, removed at
    exit, so that a restarted service starts from zero (as Prometheus expects of a restarted
    target) and two services on one machine never mix their files.

    prometheus_client chooses where values live when it is first imported: this must come first.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
    path = Path(tempfile.mkdtemp(prefix=f"kiln-metrics-{name}-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
