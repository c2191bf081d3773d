"""`kiln audit`: the operator's view of the audit log (straight to Postgres, every tenant)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
import orjson

from app.cli.base import sessions, settings_from

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None) -> datetime | None:
    """An ISO 8601 time, or an age such as `30m`, `12h` or `7d`."""
    if value is None:
        return None
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip()):
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("an ISO time (2026-12-01T09:00) or an age (30m, 12h, 7d)",
                                 param_hint="--since") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group(invoke_without_command=True)
@click.option("--tenant", default=None, help="Only this tenant's events (its name).")
@click.option("--action", default=None, help="Only this action, e.g. job.cancel.")
@click.option("--since", default=None, help="An ISO time or an age (30m, 12h, 7d).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def audit(ctx: click.Context, tenant: str | None, action: str | None, since: str | None,
          limit: int, as_json: bool) -> None:
    """Who changed what, newest first (every tenant unless --tenant)."""
    if ctx.invoked_subcommand is not None:
        return
    from app.errors import NotFound
    from app.services.limits import tenant_by_name
    from app.store.audit import list_events

    moment = parse_since(since)
    with sessions(settings_from(ctx))() as session:
        try:
            tenant_id = tenant_by_name(session, tenant).id if tenant else None
        except NotFound as exc:
            raise click.ClickException(exc.detail) from None
        events = list_events(session, tenant_id, limit=limit, action=action, since=moment,
                             all_tenants=tenant is None)
        for event in events:
            row = {"id": event.id, "at": event.at.isoformat(), "tenant_id": event.tenant_id,
                   "actor": event.actor, "action": event.action,
                   "target_type": event.target_type, "target_id": event.target_id,
                   "request_id": event.request_id, "client_ip": event.client_ip,
                   "details": event.details}
            if as_json:
                click.echo(orjson.dumps(row).decode())
            else:
                click.echo(f"{row['at']}\t{event.actor}\t{event.action}\t"
                           f"{event.target_type}:{event.target_id}\t{event.tenant_id}\t"
                           f"{orjson.dumps(event.details).decode()}")


@audit.command("prune")
@click.option("--older-than-days", type=click.FloatRange(min=1), required=True,
              help="Delete the events older than this many days.")
@click.pass_context
def audit_prune(ctx: click.Context, older_than_days: float) -> None:
    """The retention sweep: the one path the append-only trigger lets delete events."""
    from app.store.audit import prune

    before = datetime.now(UTC) - timedelta(days=older_than_days)
    removed = 0
    while True:
        with sessions(settings_from(ctx)).begin() as session:
            count = prune(session, before)
        removed += count
        if count == 0:
            break
    click.echo(f"removed {removed} audit events older than {before.isoformat()}")
