"""`kiln db`: the database schema."""

from __future__ import annotations

import click

from app.cli.base import settings_from


@click.group()
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
