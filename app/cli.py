"""The `kiln` command line: control-plane and client commands.

Worker-side commands (`kiln worker`, `kiln up`, `kiln models add-demo`) are added by
`workers.cli`, which is the console script's entry point, so that `app` never imports `workers`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

from app.cpus import apply_cpu_policy
from app.settings import Settings, load_settings

err = Console(stderr=True)


def settings_from(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Kiln: asynchronous batch inference on Postgres, Redis and Celery."""
    ctx.ensure_object(dict)
    ctx.obj["settings"] = load_settings()


# ---------------------------------------------------------------- database and keys

@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply Alembic migrations."""
    from app.migrate import upgrade

    upgrade(settings_from(ctx), revision)
    click.echo(f"database at {revision}")


@db.command("wait")
@click.option("--timeout", "timeout_seconds", default=300.0, show_default=True,
              help="Seconds to wait before giving up (exit status 1).")
@click.pass_context
def db_wait(ctx: click.Context, timeout_seconds: float) -> None:
    """Wait until the database is reachable and at this code's migration head: for an init
    container or a start script, so that only one place (`kiln db upgrade`) migrates."""
    import time

    from sqlalchemy.exc import OperationalError

    from app.migrate import revisions

    settings = settings_from(ctx)
    deadline, state = time.monotonic() + timeout_seconds, "not reached yet"
    while True:
        try:
            current, head = revisions(settings)
            if current == head:
                click.echo(f"database at {head}")
                return
            state = f"database at {current or 'no revision'}, this code needs {head}"
        except OperationalError as exc:
            state = f"database unreachable: {str(exc.orig or exc).strip().splitlines()[0]}"
        if time.monotonic() > deadline:
            raise click.ClickException(f"gave up after {timeout_seconds:g}s: {state}")
        time.sleep(1)


def sessions(settings: Settings):
    from app.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings, pool_size=1))


@cli.group()
def keys() -> None:
    """API keys (stored hashed; shown once)."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if it does not exist.")
@click.option("--name", default=None, help="A label for the key.")
@click.pass_context
def keys_create(ctx: click.Context, tenant: str, name: str | None) -> None:
    """Create an API key; the key alone is printed on the last line."""
    from app.services.auth import create_key

    with sessions(settings_from(ctx)).begin() as session:
        key, plain = create_key(session, tenant, name)
        prefix = key.prefix
    err.print(f"Created key {prefix} for tenant {tenant!r}. It is shown once; store it now.")
    click.echo(plain)


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    from app.services.auth import list_keys

    with sessions(settings_from(ctx))() as session:
        for key, tenant in list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.prefix}\t{tenant}\t{state}\t{key.created_at:%Y-%m-%d %H:%M}")


@keys.command("revoke")
@click.argument("prefix")
@click.pass_context
def keys_revoke(ctx: click.Context, prefix: str) -> None:
    from app.errors import NotFound
    from app.services.auth import revoke_key

    try:
        with sessions(settings_from(ctx)).begin() as session:
            revoke_key(session, prefix)
    except NotFound as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"revoked {prefix}")


# ---------------------------------------------------------------- serving

@cli.command()
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


# ---------------------------------------------------------------- client commands

def client(ctx: click.Context):
    from app.client import KilnClient

    settings = settings_from(ctx)
    if not settings.api_key:
        raise click.ClickException("set KILN_API_KEY to a key from `kiln keys create`")
    return KilnClient(settings.api_url, settings.api_key)


def read_records(path: Path) -> list:
    text = path.read_bytes()
    if text.lstrip().startswith(b"["):
        return orjson.loads(text)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def api_call(fn, *args, **kwargs):
    from app.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def wait_with_progress(kiln, job_id: str) -> dict:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("rows"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(job_id[:8], total=None, rate="")

        def update(job: dict) -> None:
            counts = job["request_counts"]
            rate = job.get("rows_per_second")
            progress.update(task, total=counts["total"] or None,
                            completed=counts["completed"] + counts["failed"],
                            description=f"{job_id[:8]} {job['status']}",
                            rate=f"{rate:,.0f} rows/s" if rate else "")

        return api_call(kiln.wait, job_id, on_update=update)


@cli.command()
@click.option("--model", required=True)
@click.option("--input", "input_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="JSONL (one record per line) or a JSON array.")
@click.option("--priority", type=int, default=0)
@click.option("--webhook-url", default=None)
@click.option("--idempotency-key", default=None)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job with a progress bar.")
@click.pass_context
def submit(ctx: click.Context, model: str, input_path: Path, priority: int,
           webhook_url: str | None, idempotency_key: str | None, wait_: bool) -> None:
    """Submit an inline job; prints the job id (and the final job with --wait)."""
    kiln = client(ctx)
    job = api_call(kiln.submit, model, read_records(input_path), priority=priority,
                   webhook_url=webhook_url, idempotency_key=idempotency_key)
    err.print(f"submitted job {job['id']} ({job['request_counts']['total']} records)")
    if wait_:
        job = wait_with_progress(kiln, job["id"])
        click.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(job["id"])


@cli.command()
@click.argument("job_id")
@click.pass_context
def status(ctx: click.Context, job_id: str) -> None:
    """Print a job as JSON."""
    click.echo(orjson.dumps(api_call(client(ctx).job, job_id), option=orjson.OPT_INDENT_2).decode())


@cli.command()
@click.argument("job_id")
@click.pass_context
def wait(ctx: click.Context, job_id: str) -> None:
    """Wait for a job with a progress bar; exit 1 unless it succeeded."""
    job = wait_with_progress(client(ctx), job_id)
    click.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
    if job["status"] != "succeeded":
        sys.exit(1)


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job."""
    click.echo(orjson.dumps(api_call(client(ctx).cancel, job_id), option=orjson.OPT_INDENT_2).decode())


def download(ctx: click.Context, job_id: str, output: Path | None, kind: str,
             fmt: str | None) -> None:
    """Stream a job's results or errors to stdout, or to a file with a progress bar."""
    from app.client import ApiError

    kiln = client(ctx)
    if fmt is None and output is not None and output.suffix.lstrip(".") in ("csv", "jsonl", "parquet"):
        fmt = output.suffix.lstrip(".")
    try:
        if output is None:
            for chunk in kiln.iter_results(job_id, kind, fmt):
                sys.stdout.buffer.write(chunk)
            return
        counts = kiln.job(job_id)["request_counts"]
        total = counts["completed"] if kind == "results" else counts["failed"]
        columns = (TextColumn(kind), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=err) as progress, output.open("wb") as handle:
            task = progress.add_task("download", total=None)
            for chunk in kiln.iter_results(job_id, kind, fmt):
                handle.write(chunk)
                progress.advance(task, len(chunk))
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"wrote {output} ({total} {kind} rows)")


FORMAT = click.Choice(["csv", "jsonl", "parquet"])


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to this file (with a progress bar) instead of stdout.")
@click.option("--format", "fmt", type=FORMAT, default=None, help="Convert while streaming.")
@click.pass_context
def results(ctx: click.Context, job_id: str, output: Path | None, fmt: str | None) -> None:
    """Stream a job's results (input order)."""
    download(ctx, job_id, output, "results", fmt)


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None)
@click.option("--format", "fmt", type=FORMAT, default=None)
@click.pass_context
def errors(ctx: click.Context, job_id: str, output: Path | None, fmt: str | None) -> None:
    """Stream a file job's failed rows (id columns, error_code, error_message)."""
    download(ctx, job_id, output, "errors", fmt)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True)
@click.option("--keep-columns", default=None, help="Comma-separated input columns to copy.")
@click.option("--id-column", default=None, help="Column identifying each row.")
@click.option("--output-format", type=FORMAT, default=None)
@click.option("--format", "fmt", default=None, help="Input format when the name does not say.")
@click.option("--max-failed-fraction", type=float, default=None)
@click.option("--wait", "wait_", is_flag=True, help="Wait with a progress bar.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="With --wait: download the results here.")
@click.pass_context
def upload(ctx: click.Context, path: Path, model: str, keep_columns: str | None,
           id_column: str | None, output_format: str | None, fmt: str | None,
           max_failed_fraction: float | None, wait_: bool, output: Path | None) -> None:
    """Upload a CSV/JSONL/Parquet file for bulk scoring and create the job."""
    kiln = client(ctx)
    columns = (TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("upload", total=path.stat().st_size)
        meta = api_call(kiln.upload, path, fmt=fmt,
                        on_bytes=lambda n: progress.advance(task, n))
    job = api_call(kiln.submit_file, model, meta["id"], output_format=output_format,
                   keep_columns=keep_columns.split(",") if keep_columns else None,
                   id_column=id_column, max_failed_fraction=max_failed_fraction)
    err.print(f"uploaded {meta['filename']} as {meta['id']}; job {job['id']}")
    if not wait_:
        click.echo(job["id"])
        return
    job = wait_with_progress(kiln, job["id"])
    click.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
    if output is not None:
        download(ctx, job["id"], output, "results", output_format)
    if job["status"] != "succeeded":
        sys.exit(1)


@cli.group()
def models() -> None:
    """Models."""


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """Models visible to your key."""
    for model in api_call(client(ctx).models):
        click.echo(f"{model['name']}\tv{model['version']}\t{model['variant']}\t"
                   f"{orjson.dumps(model['metrics']).decode()}")


from app.cli_webhooks import webhooks  # noqa: E402 - the group lives in its own module

cli.add_command(webhooks)

import app.cli_models  # noqa: E402,F401 - adds `models add` and `models alias` to the group
