"""Tenants and their limits: what an operator sets, and what applies once defaults fill in."""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound
from app.orm import Tenant
from app.services import audit
from app.settings import Settings
from app.store import limits as limit_store

# The tenant columns an operator sets (`kiln tenants limits`); NULL = the setting's default.
LIMIT_COLUMNS = ("max_queued_rows", "max_active_jobs", "max_storage_bytes",
                 "submits_per_second", "submit_burst")


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one tenant; 0 = unlimited."""

    max_queued_rows: int = 0
    max_active_jobs: int = 0
    max_storage_bytes: int = 0
    submits_per_second: float = 0.0
    submit_burst: int = 0

    @property
    def counted(self) -> bool:
        """Whether a submit must count this tenant's jobs or bytes under its lock."""
        return bool(self.max_queued_rows or self.max_active_jobs or self.max_storage_bytes)

    @property
    def burst(self) -> int:
        """Submits allowed at once: the burst, else one second's worth of the rate."""
        return self.submit_burst or max(1, math.ceil(self.submits_per_second))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def effective_limits(tenant: Tenant, settings: Settings) -> Limits:
    """The tenant's own limits, each defaulting to its `KILN_TENANT_*` setting."""
    values = {}
    for column in LIMIT_COLUMNS:
        own = getattr(tenant, column)
        values[column] = own if own is not None else getattr(settings, f"tenant_{column}")
    return Limits(**values)


def load_limits(session: Session, tenant_id: uuid.UUID, settings: Settings) -> Limits:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id}")
    return effective_limits(tenant, settings)


def create_tenant(session: Session, name: str) -> Tenant:
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"tenant {name!r} exists")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    audit.record(session, "tenant.create", "tenant", tenant.id, tenant_id=tenant.id,
                 details={"name": name})
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


def tenant_by_name(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant {name!r}")
    return tenant


def set_limits(session: Session, name: str, **changes: float | int | None) -> Tenant:
    """Set the given limits (None leaves one as it is); a negative value is refused."""
    tenant = tenant_by_name(session, name)
    for column, value in changes.items():
        if column not in LIMIT_COLUMNS:
            raise ValueError(f"unknown limit {column}")
        if value is None:
            continue
        if value < 0:
            raise Conflict(f"{column} must be 0 (unlimited) or more")
        setattr(tenant, column, value)
    session.flush()
    audit.record(session, "tenant.limits", "tenant", tenant.id, tenant_id=tenant.id,
                 details={k: v for k, v in changes.items() if v is not None})
    return tenant


def set_file_retention(session: Session, name: str, seconds: float | None) -> Tenant:
    """The tenant's default retention of uploads (None: KILN_FILE_RETENTION_SECONDS; 0: kept)."""
    if seconds is not None and seconds < 0:
        raise Conflict("file_retention_seconds must be 0 (kept) or more")
    tenant = tenant_by_name(session, name)
    tenant.file_retention_seconds = seconds
    session.flush()
    audit.record(session, "tenant.file_retention", "tenant", tenant.id, tenant_id=tenant.id,
                 details={"file_retention_seconds": seconds})
    return tenant


def current_use(session: Session, tenant_id: uuid.UUID) -> dict[str, int]:
    backlog = limit_store.tenant_backlog(session, tenant_id)
    return {"queued_rows": backlog.queued_rows, "active_jobs": backlog.active_jobs,
            "storage_bytes": limit_store.tenant_storage_bytes(session, tenant_id)}


def describe_tenant(session: Session, tenant: Tenant, settings: Settings) -> dict[str, Any]:
    """What `kiln tenants show` prints: the limits that apply and the current use."""
    return {"tenant": tenant.name, "id": str(tenant.id),
            "limits": effective_limits(tenant, settings).as_dict(),
            "current": current_use(session, tenant.id)}
