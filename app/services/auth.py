"""Tenants and API keys. A key is shown once and stored as a SHA-256 hash with a visible prefix."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.caching import LoadingCache, cached_or_loaded
from app.errors import NotFound, Unauthorized
from app.orm import ApiKey, Tenant
from app.services import audit

KEY_PREFIX = "kiln_"


@dataclass(frozen=True)
class Caller:
    """The authenticated tenant behind a request."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_prefix: str | None = None  # the audit log's actor


def get_owned(session: Session, caller: Caller, entity, raw_id, what: str, *,
              lock: bool = False):
    """The `entity` row with this id in the caller's tenant; another tenant's row is a 404 too.
    `lock`: read it fresh and hold its row until the transaction ends (`key_share=True` is
    FOR NO KEY UPDATE: it does not block rows that only reference it)."""
    try:
        ident = uuid.UUID(str(raw_id))
    except ValueError:
        raise NotFound(f"no {what} {raw_id!r}") from None
    query = select(entity).where(entity.id == ident, entity.tenant_id == caller.tenant_id)
    if lock:
        query = query.with_for_update(key_share=True) \
            .execution_options(populate_existing=True)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"no {what} {raw_id!r}")
    return row


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
        audit.record(session, "tenant.create", "tenant", tenant.id, tenant_id=tenant.id,
                     details={"name": name})
    return tenant


def create_key(session: Session, tenant_name: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for a tenant (creating the tenant if needed); the plain key is returned once."""
    tenant = get_or_create_tenant(session, tenant_name)
    public = secrets.token_hex(4)
    plain = f"{KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    key = ApiKey(tenant_id=tenant.id, prefix=f"{KEY_PREFIX}{public}", key_hash=hash_key(plain), name=name)
    session.add(key)
    session.flush()
    audit.record(session, "key.create", "api_key", key.prefix, tenant_id=tenant.id,
                 details={"name": name} if name else None)
    return key, plain


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(select(ApiKey, Tenant.name).join(Tenant).order_by(ApiKey.created_at))
    return [(key, tenant_name) for key, tenant_name in rows]


def revoke_key(session: Session, prefix: str) -> ApiKey:
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None:
        raise NotFound(f"no API key with prefix {prefix!r}")
    if key.revoked_at is None:
        key.revoked_at = func.now()
        audit.record(session, "key.revoke", "api_key", key.prefix, tenant_id=key.tenant_id)
    session.flush()
    return key


def authenticate(session: Session, authorization: str | None,
                 cache: LoadingCache[Caller] | None = None) -> Caller:
    """Resolve `Authorization: Bearer KEY` to its tenant, or raise Unauthorized.

    `cache` (keyed by the key's hash, a short TTL) saves a query per request; a revoked key
    then stops working when its entry expires.
    """
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send the API key as 'Authorization: Bearer KEY'")
    return authenticate_hash(session, hash_key(authorization[len("Bearer "):].strip()), cache)


def authenticate_hash(session: Session, key_hash: str,
                      cache: LoadingCache[Caller] | None = None) -> Caller:
    """The tenant of the key with this hash (the dashboard's session keeps the hash, never the
    key), checked on every request so that revoking the key ends the session."""

    def load() -> Caller:
        row = session.execute(
            select(ApiKey.tenant_id, Tenant.name, ApiKey.prefix).join(Tenant)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        ).first()
        if row is None:
            raise Unauthorized("the API key is unknown or revoked")
        return Caller(tenant_id=row.tenant_id, tenant_name=row.name, key_prefix=row.prefix)

    return cached_or_loaded(cache, key_hash, load)
