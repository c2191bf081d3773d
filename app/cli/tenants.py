"""`kiln tenants`: tenants and their limits (control plane: straight to Postgres)."""

from __future__ import annotations

import click
import orjson

from app.cli.base import sessions, settings_from


def _print_json(value) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@click.group()
def tenants() -> None:
    """Tenants and their limits (0 = unlimited; unset = the KILN_TENANT_* default)."""


@tenants.command("create")
@click.argument("name")
@click.pass_context
def tenants_create(ctx: click.Context, name: str) -> None:
    """Create a tenant; prints its id."""
    from app.errors import Conflict
    from app.services.limits import create_tenant

    try:
        with sessions(settings_from(ctx)).begin() as session:
            tenant_id = create_tenant(session, name).id
    except Conflict as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(str(tenant_id))


@tenants.command("list")
@click.pass_context
def tenants_list(ctx: click.Context) -> None:
    """One line per tenant: name, id, created."""
    from app.services.limits import list_tenants

    with sessions(settings_from(ctx))() as session:
        for tenant in list_tenants(session):
            click.echo(f"{tenant.name}\t{tenant.id}\t{tenant.created_at:%Y-%m-%d %H:%M}")


@tenants.command("show")
@click.argument("name")
@click.pass_context
def tenants_show(ctx: click.Context, name: str) -> None:
    """The limits that apply to a tenant and its current use, as JSON."""
    _print_json(_described(ctx, name, {}))


@tenants.command("limits")
@click.argument("name")
@click.option("--max-queued-rows", type=int, default=None, help="Rows of unfinished jobs.")
@click.option("--max-active-jobs", type=int, default=None, help="Unfinished jobs.")
@click.option("--max-storage-bytes", type=int, default=None, help="Bytes of stored files.")
@click.option("--submits-per-second", type=float, default=None, help="Submit rate.")
@click.option("--burst", type=int, default=None, help="Submits at once over the rate.")
@click.pass_context
def tenants_limits(ctx: click.Context, name: str, burst: int | None, **limits) -> None:
    """Set a tenant's limits (those given; 0 = unlimited); prints the tenant as `show` does.
    Running APIs apply a change within KILN_TUNING__CACHE_SECONDS."""
    _print_json(_described(ctx, name, {**limits, "submit_burst": burst}))


@tenants.command("retention")
@click.argument("name")
@click.option("--file-retention-seconds", type=float, default=None,
              help="Uploads are deleted this long after upload (0 = kept); unset: the "
                   "KILN_FILE_RETENTION_SECONDS default.")
@click.pass_context
def tenants_retention(ctx: click.Context, name: str, file_retention_seconds: float | None) -> None:
    """Set (or, without the option, reset to the default) a tenant's upload retention."""
    from app.errors import Conflict, NotFound
    from app.services.limits import set_file_retention

    try:
        with sessions(settings_from(ctx)).begin() as session:
            tenant = set_file_retention(session, name, file_retention_seconds)
            _print_json({"tenant": tenant.name,
                         "file_retention_seconds": tenant.file_retention_seconds})
    except (Conflict, NotFound) as exc:
        raise click.ClickException(exc.detail) from None


def _described(ctx: click.Context, name: str, changes: dict) -> dict:
    from app.errors import Conflict, NotFound
    from app.services.limits import describe_tenant, set_limits, tenant_by_name

    settings = settings_from(ctx)
    try:
        with sessions(settings).begin() as session:
            tenant = set_limits(session, name, **changes) if changes else \
                tenant_by_name(session, name)
            return describe_tenant(session, tenant, settings)
    except (Conflict, NotFound) as exc:
        raise click.ClickException(exc.detail) from None
