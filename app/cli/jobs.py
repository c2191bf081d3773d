"""`kiln submit`, `status`, `wait`, `cancel`, `results`, `errors` and `upload`: jobs, through
the API."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

from app.cli.base import api_call, client, err, settings_from
from app.cli.upstatus import print_up_status


def read_records(path: Path) -> list:
    text = path.read_bytes()
    if text.lstrip().startswith(b"["):
        return orjson.loads(text)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def print_json(value) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


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


@click.command()
@click.option("--model", required=True)
@click.option("--input", "input_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="JSONL (one record per line) or a JSON array.")
@click.option("--priority", type=int, default=0)
@click.option("--webhook-url", default=None)
@click.option("--idempotency-key", default=None)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job with a progress bar.")
@click.option("--estimate", "estimate_", is_flag=True,
              help="Print the estimate (rows, queue ahead, finish time) and submit nothing.")
@click.pass_context
def submit(ctx: click.Context, model: str, input_path: Path, priority: int,
           webhook_url: str | None, idempotency_key: str | None, wait_: bool,
           estimate_: bool) -> None:
    """Submit an inline job; prints the job id (and the final job with --wait)."""
    kiln = client(ctx)
    if estimate_:
        body = {"model": model, "inputs": read_records(input_path), "priority": priority}
        print_json(api_call(kiln.estimate, body))
        return
    job = api_call(kiln.submit, model, read_records(input_path), priority=priority,
                   webhook_url=webhook_url, idempotency_key=idempotency_key)
    err.print(f"submitted job {job['id']} ({job['request_counts']['total']} records)")
    if wait_:
        job = wait_with_progress(kiln, job["id"])
        click.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(job["id"])


@click.command()
@click.argument("job_id", required=False)
@click.pass_context
def status(ctx: click.Context, job_id: str | None) -> None:
    """Print a job as JSON; with no job id, the services of the running `kiln up`."""
    if job_id is None:
        print_up_status(settings_from(ctx))
        return
    click.echo(orjson.dumps(api_call(client(ctx).job, job_id), option=orjson.OPT_INDENT_2).decode())


@click.command()
@click.argument("job_id")
@click.pass_context
def wait(ctx: click.Context, job_id: str) -> None:
    """Wait for a job with a progress bar; exit 1 unless it succeeded."""
    job = wait_with_progress(client(ctx), job_id)
    click.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
    if job["status"] != "succeeded":
        sys.exit(1)


@click.command()
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


@click.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to this file (with a progress bar) instead of stdout.")
@click.option("--format", "fmt", type=FORMAT, default=None, help="Convert while streaming.")
@click.pass_context
def results(ctx: click.Context, job_id: str, output: Path | None, fmt: str | None) -> None:
    """Stream a job's results (input order)."""
    download(ctx, job_id, output, "results", fmt)


@click.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None)
@click.option("--format", "fmt", type=FORMAT, default=None)
@click.pass_context
def errors(ctx: click.Context, job_id: str, output: Path | None, fmt: str | None) -> None:
    """Stream a file job's failed rows (id columns, error_code, error_message)."""
    download(ctx, job_id, output, "errors", fmt)


@click.command()
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
@click.option("--estimate", "estimate_", is_flag=True,
              help="Upload, print the estimate (exact rows, queue ahead, finish time), then "
                   "delete the upload; no job is created.")
@click.pass_context
def upload(ctx: click.Context, path: Path, model: str, keep_columns: str | None,
           id_column: str | None, output_format: str | None, fmt: str | None,
           max_failed_fraction: float | None, wait_: bool, output: Path | None,
           estimate_: bool) -> None:
    """Upload a CSV/JSONL/Parquet file for bulk scoring and create the job."""
    kiln = client(ctx)
    columns = (TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("upload", total=path.stat().st_size)
        meta = api_call(kiln.upload, path, fmt=fmt,
                        on_bytes=lambda n: progress.advance(task, n))
    options = dict(output_format=output_format,
                   keep_columns=keep_columns.split(",") if keep_columns else None,
                   id_column=id_column, max_failed_fraction=max_failed_fraction)
    if estimate_:
        try:
            print_json(api_call(kiln.estimate, {"model": model, "input_file": meta["id"],
                                                **{k: v for k, v in options.items()
                                                   if v is not None}}))
        finally:
            api_call(kiln.delete_file, meta["id"])
        return
    job = api_call(kiln.submit_file, model, meta["id"], **options)
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
