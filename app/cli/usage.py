"""`kiln usage`: the caller's usage, through the API, as a table."""

from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.table import Table

from app.cli.base import api_call, client

COLUMNS = ("jobs", "rows", "failed_rows", "model_seconds", "bytes_in", "bytes_out")


def usage_table(report: dict) -> Table:
    """One row for the totals, then one per group (model or day) when grouped."""
    key = next((k for k in ("model", "day") if report.get("groups") and k in report["groups"][0]),
               None)
    window = f"{report['start'] or '…'} to {report['end'] or '…'}"
    table = Table(title=f"usage of {report['tenant']} ({window})")
    table.add_column(key or "", style="bold")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for group in report.get("groups") or []:
        table.add_row(str(group[key]), *(_cell(group[c]) for c in COLUMNS))
    table.add_row("total", *(_cell(report["totals"][c]) for c in COLUMNS), style="bold")
    return table


def _cell(value) -> str:
    return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"


@click.command()
@click.option("--start", default=None, help="ISO 8601: jobs created from then.")
@click.option("--end", default=None, help="ISO 8601: jobs created before then.")
@click.option("--group-by", type=click.Choice(["model", "day"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead.")
@click.pass_context
def usage(ctx: click.Context, start: str | None, end: str | None, group_by: str | None,
          as_json: bool) -> None:
    """Your tenant's usage (rows, model seconds, bytes), its limits and current use."""
    report = api_call(client(ctx).usage, start=start, end=end, group_by=group_by)
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console(width=120)
    console.print(usage_table(report))
    current, limits = report["current"], report["limits"]
    console.print("now: " + ", ".join(
        f"{name} {current[name]:,} of {limits[limit] or 'unlimited'}"
        for name, limit in (("queued_rows", "max_queued_rows"), ("active_jobs", "max_active_jobs"),
                            ("storage_bytes", "max_storage_bytes"))))
