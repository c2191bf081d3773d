"""The model registry: versions per name, built-in models visible to every tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, MutableMapping

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.orm import Model
from app.storage import Storage


def visible(tenant_id: uuid.UUID | None):
    """Models a tenant may use: its own and the built-in ones."""
    return or_(Model.tenant_id.is_(None), Model.tenant_id == tenant_id)


def register_model(session: Session, storage: Storage, *, name: str, artifact: bytes,
                   signature: dict[str, Any], processing: dict[str, Any], metrics: dict[str, Any],
                   provenance: dict[str, Any] | None = None, tenant_id: uuid.UUID | None = None,
                   variant: str = "fp32") -> Model:
    """Store an ONNX artifact and record it as the next version of `name`."""
    latest = session.scalar(select(func.max(Model.version)).where(
        Model.name == name, Model.variant == variant,
        Model.tenant_id.is_(None) if tenant_id is None else Model.tenant_id == tenant_id))
    version = (latest or 0) + 1
    owner = "builtin" if tenant_id is None else str(tenant_id)
    uri, sha256 = storage.put_bytes(f"models/{owner}/{name}/v{version}/{variant}.onnx", artifact)
    model = Model(tenant_id=tenant_id, name=name, version=version, variant=variant, format="onnx",
                  uri=uri, sha256=sha256, signature=signature, processing=processing,
                  metrics=metrics, provenance=provenance or {}, aliases=["latest"])
    session.add(model)
    session.flush()
    return model


def resolve_model(session: Session, tenant_id: uuid.UUID, name: str, version: int | None = None) -> Model:
    """The model a job gets for a name: the tenant's own before a built-in, newest version first."""
    query = select(Model).where(visible(tenant_id), Model.name == name, Model.variant == "fp32")
    if version is not None:
        query = query.where(Model.version == version)
    query = query.order_by(Model.tenant_id.is_(None), Model.version.desc()).limit(1)
    model = session.scalar(query)
    if model is None:
        raise NotFound(f"no model named {name!r}" + (f" with version {version}" if version else ""))
    return model


@dataclass(frozen=True)
class ModelRef:
    """What a submit needs to know of a model, safe to cache across sessions."""

    id: uuid.UUID
    name: str
    version: int
    signature: dict[str, Any]


def resolve_model_ref(session: Session, tenant_id: uuid.UUID, name: str,
                      cache: MutableMapping[tuple, ModelRef] | None = None) -> ModelRef:
    """`resolve_model`, reduced to a ModelRef and optionally cached (a new version shows up
    when the cache entry expires)."""
    key = (tenant_id, name)
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    model = resolve_model(session, tenant_id, name)
    ref = ModelRef(model.id, model.name, model.version, dict(model.signature))
    if cache is not None:
        cache[key] = ref
    return ref


def list_models(session: Session, tenant_id: uuid.UUID) -> list[Model]:
    return list(session.scalars(select(Model).where(visible(tenant_id))
                                .order_by(Model.name, Model.version.desc(), Model.variant)))


def builtin_exists(session: Session, name: str) -> bool:
    return session.scalar(select(func.count()).select_from(Model)
                          .where(Model.tenant_id.is_(None), Model.name == name)) > 0
