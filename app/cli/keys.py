"""`kiln keys`: API keys."""

from __future__ import annotations

import click

from app.cli.base import err, sessions, settings_from


@click.group()
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
