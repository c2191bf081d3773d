"""What a tenant used: its limits, its current use, and its usage totals over a window."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.services.auth import Caller
from app.services.commands import ReportUsage
from app.services.limits import current_use, load_limits
from app.settings import Settings
from app.store.usage import GROUP_KEYS, usage_rows


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def usage_report(session: Session, caller: Caller, settings: Settings,
                 command: ReportUsage) -> dict[str, Any]:
    """`GET /v1/usage`: totals of the caller's jobs created in the window, and groups if asked."""
    start, end = _utc(command.start), _utc(command.end)
    # start >= end is an empty window: its totals are zero (usage_rows filters to nothing)
    if command.group_by is not None and command.group_by not in GROUP_KEYS:
        raise InvalidInput(f"`group_by` is one of {sorted(GROUP_KEYS)}")
    report = {"object": "usage", "tenant": caller.tenant_name, "start": start, "end": end,
              "limits": load_limits(session, caller.tenant_id, settings).as_dict(),
              "current": current_use(session, caller.tenant_id),
              "totals": usage_rows(session, caller.tenant_id, start, end)[0]}
    if command.group_by:
        report["groups"] = usage_rows(session, caller.tenant_id, start, end, command.group_by)
    return report

