"""The model registry: versions per name, aliases, variants, built-in models visible to every tenant.

A job names a model as `name` (the newest version), `name@ALIAS` (the version an alias points
to, e.g. `name@prod`) or `name@N` (version N). Within the version it gets the variant it asks for,
or the version's default variant (`fp32` unless its fp32 row's processing says
`default_variant`). A tenant's own models shadow built-in models of the same name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.caching import LoadingCache, cached_or_loaded
from app.domain.onnx_check import check_alias, check_model, check_model_name
from app.errors import Conflict, InvalidInput, NotFound
from app.orm import Model
from app.services import audit
from app.storage import Storage

LATEST = "latest"
BASE_VARIANT = "fp32"


def visible(tenant_id: uuid.UUID | None):
    """Models a tenant may use: its own and the built-in ones."""
    return or_(Model.tenant_id.is_(None), Model.tenant_id == tenant_id)


def owned_by(tenant_id: uuid.UUID | None):
    return Model.tenant_id.is_(None) if tenant_id is None else Model.tenant_id == tenant_id


def register_model(session: Session, storage: Storage, *, name: str, artifact: bytes,
                   signature: dict[str, Any], processing: dict[str, Any], metrics: dict[str, Any],
                   provenance: dict[str, Any] | None = None, tenant_id: uuid.UUID | None = None,
                   variant: str = BASE_VARIANT, version: int | None = None) -> Model:
    """Store an ONNX artifact and record it as the next version of `name` (or, for a variant
    of an existing version, as that `version`)."""
    owner = "builtin" if tenant_id is None else str(tenant_id)
    # Two registrations of one name must not both pick the same next version.
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"kiln-model:{owner}:{name}"))))
    if version is None:
        latest = session.scalar(select(func.max(Model.version)).where(
            Model.name == name, Model.variant == variant, owned_by(tenant_id)))
        version = (latest or 0) + 1
    uri, sha256 = storage.put_bytes(f"models/{owner}/{name}/v{version}/{variant}.onnx", artifact)
    model = Model(tenant_id=tenant_id, name=name, version=version, variant=variant, format="onnx",
                  uri=uri, sha256=sha256, signature=signature, processing=processing,
                  metrics=metrics, provenance=provenance or {}, aliases=[])
    session.add(model)
    session.flush()
    audit.record(session, "model.register" if variant == BASE_VARIANT else "model.optimize",
                 "model", model.id, tenant_id=tenant_id,
                 details={"name": name, "version": version, "variant": variant})
    return model


def register_user_model(session: Session, storage: Storage, tenant_id: uuid.UUID, *, name: str,
                        artifact: bytes, signature: dict[str, Any], processing: dict[str, Any],
                        metrics: dict[str, Any] | None = None,
                        provenance: dict[str, Any] | None = None) -> Model:
    """Check an uploaded ONNX graph against its declared signature, then register it."""
    check_model_name(name)
    signature, summary = check_model(artifact, signature, processing)
    return register_model(session, storage, name=name, artifact=artifact, signature=signature,
                          processing=processing, metrics=metrics or {},
                          provenance={**(provenance or {}), "graph": summary.as_dict(),
                                      "source": (provenance or {}).get("source", "upload")},
                          tenant_id=tenant_id)


def parse_reference(reference: str) -> tuple[str, str | None, int | None]:
    """`name`, `name@alias` or `name@3` -> (name, alias, version)."""
    name, _, pointer = reference.partition("@")
    if not name or (_ and not pointer):
        raise InvalidInput(f"model {reference!r} must be `name`, `name@alias` or `name@version`")
    if not pointer or pointer == LATEST:
        return name, None, None
    if pointer.isdigit():
        return name, None, int(pointer)
    return name, pointer, None


def model_owner(session: Session, tenant_id: uuid.UUID | None, name: str) -> uuid.UUID | None:
    """Whose `name` a tenant gets: its own when it has one, else the built-in one."""
    owners = session.scalars(select(Model.tenant_id).where(visible(tenant_id), Model.name == name)
                             .order_by(Model.tenant_id.is_(None)).limit(1)).all()
    if not owners:
        raise NotFound(f"no model named {name!r}")
    return owners[0]


def resolve_model(session: Session, tenant_id: uuid.UUID, name: str, version: int | None = None,
                  *, alias: str | None = None, variant: str | None = None) -> Model:
    """The model row a job gets: the owner's version (by number, alias or newest), then the
    variant asked for or the version's default."""
    owner = model_owner(session, tenant_id, name)
    same_name = (owned_by(owner), Model.name == name)
    if version is None and alias is not None and alias != LATEST:
        version = session.scalar(select(func.max(Model.version)).where(
            *same_name, Model.aliases.contains([alias])))
        if version is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}")
    elif version is None:
        version = session.scalar(select(func.max(Model.version)).where(*same_name))
    rows = {m.variant: m for m in session.scalars(
        select(Model).where(*same_name, Model.version == version))}
    if not rows:
        raise NotFound(f"no model named {name!r} with version {version}")
    base = rows.get(BASE_VARIANT)
    wanted = variant or (base.processing.get("default_variant", BASE_VARIANT) if base else
                         BASE_VARIANT)
    if wanted not in rows:
        raise NotFound(f"model {name!r} version {version} has no {wanted!r} variant "
                       f"(it has {', '.join(sorted(rows))})")
    return rows[wanted]


@dataclass(frozen=True)
class ModelRef:
    """What a submit needs to know of a model, safe to cache across sessions."""

    id: uuid.UUID
    name: str
    version: int
    signature: dict[str, Any]
    variant: str = BASE_VARIANT
    requires_gpu: bool = False
    batch_wait_ms: float | None = None  # processing["max_batch_wait_ms"]; None: KILN_ default


def resolve_model_ref(session: Session, tenant_id: uuid.UUID, name: str,
                      cache: LoadingCache[ModelRef] | None = None,
                      variant: str | None = None) -> ModelRef:
    """`resolve_model` for a reference (`name`, `name@alias`, `name@N`), reduced to a ModelRef
    and optionally cached (a new version or a moved alias shows up when the entry expires)."""
    def load() -> ModelRef:
        plain, alias, version = parse_reference(name)
        model = resolve_model(session, tenant_id, plain, version, alias=alias, variant=variant)
        return ModelRef(model.id, model.name, model.version, dict(model.signature),
                        model.variant,
                        requires_gpu=bool(model.processing.get("requires_gpu"))
                        or model.variant == "fp16",
                        batch_wait_ms=model.processing.get("max_batch_wait_ms"))

    return cached_or_loaded(cache, (tenant_id, name, variant), load)


def owned_model(session: Session, tenant_id: uuid.UUID | None, name: str,
                version: int | None = None, variant: str = BASE_VARIANT) -> Model:
    """One owner's row (no shadowing): the newest version unless one is named."""
    query = select(Model).where(owned_by(tenant_id), Model.name == name, Model.variant == variant)
    if version is not None:
        query = query.where(Model.version == version)
    model = session.scalar(query.order_by(Model.version.desc()).limit(1))
    if model is None:
        raise NotFound(f"no {variant} model named {name!r}"
                       + (f" with version {version}" if version else ""))
    return model


def set_alias(session: Session, tenant_id: uuid.UUID, name: str, alias: str,
              version: int) -> Model:
    """Point `alias` at one version of the tenant's own model (moving it off any other)."""
    check_alias(alias)
    rows = list(session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.name == name,
                            Model.variant == BASE_VARIANT)
        .order_by(Model.version).with_for_update()))
    if not rows:
        if builtin_exists(session, name):
            raise Conflict(f"{name!r} is a built-in model; its aliases cannot be changed")
        raise NotFound(f"no model named {name!r}")
    target = next((m for m in rows if m.version == version), None)
    if target is None:
        raise NotFound(f"model {name!r} has no version {version} "
                       f"(versions: {', '.join(str(m.version) for m in rows)})")
    for model in rows:
        kept = [a for a in model.aliases if a not in (alias, LATEST)]
        model.aliases = [*kept, alias] if model is target else kept
    session.flush()
    audit.record(session, "model.alias", "model", target.id, tenant_id=tenant_id,
                 details={"name": name, "alias": alias, "version": version})
    return target


def set_default_variant(session: Session, model: Model, variant: str) -> None:
    """Make jobs that name no variant get `variant` of this model's version."""
    base = owned_model(session, model.tenant_id, model.name, model.version)
    base.processing = {**base.processing, "default_variant": variant}
    session.flush()
    audit.record(session, "model.default_variant", "model", base.id, tenant_id=model.tenant_id,
                 details={"name": model.name, "version": model.version, "variant": variant})


@dataclass(frozen=True)
class VersionFacts:
    """What belongs to a version rather than to one variant row."""

    aliases: list[str]
    default_variant: str


def version_facts(models: list[Model]) -> dict[tuple, VersionFacts]:
    """Per (owner, name, version): its aliases (`latest` on the newest) and default variant."""
    newest: dict[tuple, int] = {}
    for m in models:
        key = (m.tenant_id, m.name)
        newest[key] = max(newest.get(key, 0), m.version)
    facts = {}
    for m in models:
        if m.variant == BASE_VARIANT:
            named = [a for a in m.aliases if a != LATEST]
            if newest[(m.tenant_id, m.name)] == m.version:
                named = [LATEST, *named]
            facts[(m.tenant_id, m.name, m.version)] = VersionFacts(
                named, m.processing.get("default_variant", BASE_VARIANT))
    return facts


def list_models(session: Session, tenant_id: uuid.UUID) -> list[Model]:
    return list(session.scalars(select(Model).where(visible(tenant_id))
                                .order_by(Model.name, Model.version.desc(), Model.variant)))


def model_versions(session: Session, tenant_id: uuid.UUID, name: str) -> list[Model]:
    """Every version and variant of `name` that the tenant's jobs would choose from."""
    owner = model_owner(session, tenant_id, name)
    return list(session.scalars(select(Model).where(owned_by(owner), Model.name == name)
                                .order_by(Model.version.desc(), Model.variant)))


def builtin_exists(session: Session, name: str) -> bool:
    return session.scalar(select(func.count()).select_from(Model)
                          .where(Model.tenant_id.is_(None), Model.name == name)) > 0
