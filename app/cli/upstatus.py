"""`kiln status` without a job id: the services of the `kiln up` running under `KILN_HOME`."""

from __future__ import annotations

import time

import click
import httpx
from rich.console import Console
from rich.table import Table

from app.settings import Settings
from app.upstate import UpState, read_up_state


def print_up_status(settings: Settings) -> None:
    """Print the table and `/readyz`; exit 1 when no `kiln up` runs or it is not ready."""
    state = read_up_state(settings.home)
    if state is None:
        raise click.ClickException(f"no `kiln up` is running under {settings.home.resolve()}")
    table = Table(title=f"kiln up (pid {state.pid}, up {format_seconds(time.time() - state.started_at)})")
    for column in ("service", "state", "pid", "uptime", "restarts", "url", "last exit"):
        table.add_column(column)
    for service in state.services:
        uptime = service.uptime_seconds()
        table.add_row(service.name, service.state, str(service.pid or "-"),
                      format_seconds(uptime) if uptime is not None else "-",
                      str(service.restarts), service.url or "-", service.last_exit or "-")
    click.echo(render(table))
    ready, detail = readiness(state)
    click.echo(f"/readyz: {detail}")
    if not ready:
        raise SystemExit(1)


def readiness(state: UpState) -> tuple[bool, str]:
    try:
        response = httpx.get(state.api_url + "/readyz", timeout=3)
    except httpx.HTTPError as exc:
        return False, f"unreachable ({exc.__class__.__name__})"
    return response.status_code == 200, f"{response.status_code} {response.text.strip()}"


def render(table: Table) -> str:
    console = Console(width=200)
    with console.capture() as captured:
        console.print(table)
    return captured.get().rstrip()


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
