"""The root `kiln` group and the helpers its command groups share."""

from __future__ import annotations

import click
from rich.console import Console

from app import origin
from app.settings import Settings, load_settings

err = Console(stderr=True)
# Long-running services, whose changes are the system's own, not the operator's.
SERVICES = frozenset({"api", "worker", "up", "reconcile"})


def settings_from(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Kiln: asynchronous batch inference on Postgres, Redis and Celery."""
    ctx.ensure_object(dict)
    ctx.obj["settings"] = load_settings()
    if ctx.invoked_subcommand not in SERVICES:  # an operator's command: audited as `cli:<user>`
        origin.set_origin(actor=origin.cli_actor())


def sessions(settings: Settings):
    from app.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings, name="kiln-cli", pool_size=1))


def client(ctx: click.Context):
    from app.client import KilnClient

    settings = settings_from(ctx)
    if not settings.api_key:
        raise click.ClickException("set KILN_API_KEY to a key from `kiln keys create`")
    return KilnClient(settings.api_url, settings.api_key)


def api_call(fn, *args, **kwargs):
    from app.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
