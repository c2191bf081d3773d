"""SQLAlchemy 2 typed ORM: the record of every tenant, key, model, file, job and result."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (BigInteger, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Text, UniqueConstraint, func, text)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.domain.states import TERMINAL, JobStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES = ", ".join(f"'{s.value}'" for s in JobStatus)
LIVE_STATUSES = ", ".join(f"'{s.value}'" for s in JobStatus if s not in TERMINAL)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB,  # noqa: RUF012 - SQLAlchemy's own attribute
                           list[Any]: JSONB, datetime: DateTime(timezone=True)}


def _uuid() -> uuid.UUID:
    return uuid.uuid4()


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Limits (app.services.limits): NULL = the KILN_TENANT_* default, 0 = unlimited.
    max_queued_rows: Mapped[int | None] = mapped_column(BigInteger)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    submits_per_second: Mapped[float | None] = mapped_column(Float)
    submit_burst: Mapped[int | None] = mapped_column(Integer)
    # Uploads kept this long unless the upload says; NULL = KILN_FILE_RETENTION_SECONDS, 0 = kept.
    file_retention_seconds: Mapped[float | None] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]


class Model(Base):
    """A registered model version. `tenant_id` NULL means built in and visible to every tenant."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version", "variant",
                                       name="tenant_name_version_variant",
                                       postgresql_nulls_not_distinct=True),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                                        index=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    variant: Mapped[str] = mapped_column(String(32), default="fp32")
    format: Mapped[str] = mapped_column(String(32), default="onnx")
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[dict[str, Any]] = mapped_column(default=dict)
    processing: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    aliases: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_expires_at", "expires_at",
                            postgresql_where=text("expires_at IS NOT NULL")),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(32), default="input")
    filename: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(String(16))
    compression: Mapped[str | None] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    row_count: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({JOB_STATUSES})", name="status"),
        CheckConstraint("kind IN ('inline', 'file')", name="kind"),
        # Partial: most jobs carry no key, and would otherwise pay for it on every row version.
        Index("ix_jobs_idempotency_key", "tenant_id", "idempotency_key", unique=True,
              postgresql_where=text("idempotency_key IS NOT NULL")),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # The inline claim reads the head of each tenant's queue and the jobs nearest their end.
        Index("ix_jobs_queued_by_tenant", "model_id", "tenant_id", text("priority DESC"),
              "created_at", postgresql_where=text("status = 'queued'")),
        Index("ix_jobs_queued_by_deadline", "model_id", "expires_at",
              postgresql_where=text("status = 'queued'")),
        # A limited submit counts its tenant's live jobs and rows (app.store.limits).
        Index("ix_jobs_live_by_tenant", "tenant_id", postgresql_include=["total_count"],
              postgresql_where=text(f"status IN ({LIVE_STATUSES})")),
        Index("ix_jobs_results_expire_at", "results_expire_at",
              postgresql_where=text("results_expired_at IS NULL")),
        Index("ix_jobs_active_lease", "lease_expires_at",
              postgresql_where=text("status IN ('running', 'cancelling', 'finalizing')")),
        # Deleting a file (or a job) finds the jobs that reference it, and so does each foreign
        # key check; partial, so the inline jobs (all NULL here) cost the submit path nothing.
        *(Index(f"ix_jobs_{column}", column, postgresql_where=text(f"{column} IS NOT NULL"))
          for column in ("input_file_id", "output_file_id", "error_file_id", "parent_id")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="inline")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    total_count: Mapped[int] = mapped_column(Integer, default=0)
    completed_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    inputs: Mapped[list[Any] | None]
    input_file_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("files.id"))
    output_file_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("files.id"))
    error_file_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("files.id"))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # why the last attempt of a leased phase (validating, finalizing) stopped, when it raised:
    # a job given up after KILN_MAX_ATTEMPTS says this instead of `worker_crashed`
    last_error: Mapped[str | None] = mapped_column(Text)
    # Usage of the results the job keeps, written in the fenced statements that count its rows
    # (`app.store.jobs`, `app.store.chunks`): model time, and bytes read and written.
    model_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Retention (app.store.retention): how long results are kept once the job ends (fixed at
    # submit; NULL = kept), when that is (set as it ends), when they went, and a delete's tombstone.
    results_retention_seconds: Mapped[float | None] = mapped_column(Float)
    results_expire_at: Mapped[datetime | None]
    results_expired_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    # The W3C trace context of the submit (JSON `traceparent`/`tracestate`) while tracing is on:
    # workers, webhooks and shared model batches continue or link to it (app.tracing).
    trace_context: Mapped[str | None] = mapped_column(Text)


class JobResult(Base):
    """One output or error per (job, input index): a re-run replaces, never duplicates."""

    __tablename__ = "job_results"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    output: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    attempt: Mapped[int] = mapped_column(Integer)


class StorageGarbage(Base):
    """Bytes in storage nothing refers to any more, removed after the commit that forgot them."""

    __tablename__ = "storage_garbage"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class JobChunk(Base):
    """A row range of a file job with its own attempt, lease and counts."""

    __tablename__ = "job_chunks"
    __table_args__ = (CheckConstraint(f"status IN ({JOB_STATUSES})", name="status"),
                      Index("ix_job_chunks_open_by_tenant", "tenant_id",
                            postgresql_where=text("status IN ('queued', 'running')")))

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    start_row: Mapped[int] = mapped_column(BigInteger)
    end_row: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None]
    completed_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    output_uri: Mapped[str | None] = mapped_column(Text)
    error_uri: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)  # why the last attempt raised, if it did


class WebhookDelivery(Base):
    """Outbox row for one webhook event, written in the transaction that changed the job."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "next_attempt_at",
                            postgresql_where=text("delivered_at IS NULL AND failed_at IS NULL")),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # NULL: the job's own webhook_url, signed with the tenant's job secret.
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(64))  # `webhook-id`: the same on every retry
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(server_default=func.now())
    sending_until: Mapped[datetime | None]  # a dispatcher's claim on an attempt in flight
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    response_ms: Mapped[int | None] = mapped_column(Integer)
    history: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'::jsonb"))
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookEndpoint(Base):
    """A URL a tenant registered for its job events, with its own encrypted signing secret."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[Any]] = mapped_column(default=list)  # empty: every event
    description: Mapped[str | None] = mapped_column(Text)
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    secret_rotated_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class TenantWebhookSecret(Base):
    """The tenant's secret for deliveries to per-job `webhook_url`s, created on first use."""

    __tablename__ = "tenant_webhook_secrets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                                 primary_key=True)
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    rotated_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who changed what: append-only (a trigger refuses UPDATE and DELETE, migration 0010).
    `tenant_id` is no foreign key, so that the record outlives what it records."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(200))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
