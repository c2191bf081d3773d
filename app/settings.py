"""One typed settings object, read from `KILN_*` environment variables when built."""

from __future__ import annotations

import json
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (BaseSettings, NoDecode, PydanticBaseSettingsSource,
                               SettingsConfigDict)

from app.cpus import cpus


def sqlalchemy_url(url: str) -> str:
    """Accept the plain `postgresql://` form users type and pick the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"unsupported database URL {url!r}: expected postgresql://…")


def kombu_url(url: str) -> str:
    """Celery/kombu spell Redis Unix sockets `redis+socket://`; redis-py spells them `unix://`."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


class Tuning(BaseModel):
    """Performance knobs whose defaults suit most installations: `KILN_TUNING__<NAME>`.

    What each one trades, and when to change it, is in docs/tuning.md.
    """

    group_commit_wait_ms: float = Field(
        default=2.0, ge=0,
        description="under load, the API's writer waits this long for more submits before "
                    "its next INSERT; 0 = never")
    max_batch_wait_ms: float = Field(
        default=20.0, ge=0,
        description="the API sends at most one message per model per this window; 0 = one per job")
    quiet_seconds: float = Field(
        default=0.005, ge=0,
        description="a job after this long without another of its model is announced at once")
    batch_size: int = Field(default=1024, description="rows per model call on CPU workers")
    gpu_batch_size: int = Field(default=4096, description="rows per model call on CUDA workers")
    max_jobs_per_claim: int = Field(default=256, description="most jobs one claim takes")
    claim_row_budget_batches: int = Field(
        default=4, description="a claim takes at most this many model batches of rows")
    single_transaction_rows: int = Field(
        default=256, ge=0,
        description="a first-try claim of at most this many rows (and one model batch) is "
                    "scored and finished in the transaction that claims it; 0 = never")
    drain_seconds: float = Field(
        default=5.0, gt=0,
        description="how long one task drains a model before yielding its process to others")
    urgent_seconds: float = Field(
        default=600.0, ge=0,
        description="jobs this close to their completion window's end are claimed first")
    chunk_rows: int = Field(default=50_000, description="rows per chunk of a file job")
    min_chunk_rows: int = Field(
        default=1000, ge=1,
        description="a text model's file of fewer than two chunks per worker process is split "
                    "into smaller chunks, down to this many rows, so that every process scores it")
    file_batch_rows: int = Field(
        default=8192, description="rows a file chunk parses and scores at once (tabular models)")
    small_job_check_ms: float = Field(
        default=20.0, ge=0,
        description="a worker scoring a file chunk looks this often, between its batches, for "
                    "small inline jobs waiting, and scores them first; 0 = never")
    text_bucket_rows: int = Field(
        default=1024, description="rows of a file chunk a text model sorts by token length at "
                                  "once, to batch similar lengths together")
    cache_seconds: float = Field(default=5.0, ge=0,
                                 description="API cache of keys and models; 0 = off")
    wait_recheck_seconds: float = Field(
        default=1.0, gt=0,
        description="a `?wait` request reads its job again this often even when no ending "
                    "message came (Redis away): the most latency a lost message costs")
    heartbeat_seconds: float | None = Field(
        default=None, description="lease renewal period; unset = a third of the lease")
    cpu_policy: Literal["batch", "normal"] = Field(
        default="batch", description="Linux scheduling policy of kiln api and kiln worker")

    @field_validator("batch_size", "gpu_batch_size", "max_jobs_per_claim",
                     "claim_row_budget_batches", "chunk_rows", "file_batch_rows",
                     "text_bucket_rows")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value


def _nest_deprecated(values: dict[str, Any]) -> dict[str, Any]:
    """Move the flat names tuning knobs had before `tuning` into it; a nested value wins.

    Accepted for one release, with a warning naming the variable to set instead."""
    flat = [name for name in Tuning.model_fields if name in values]
    if not flat:
        return values
    values = dict(values)
    tuning = values.get("tuning")
    tuning = dict(tuning) if isinstance(tuning, dict) else (
        tuning.model_dump(exclude_unset=True) if isinstance(tuning, Tuning) else {})
    for name in flat:
        warnings.warn(f"KILN_{name.upper()} is deprecated and will be ignored in the next "
                      f"release: set KILN_TUNING__{name.upper()} instead", FutureWarning,
                      stacklevel=2)
        tuning.setdefault(name, values.pop(name))
    values["tuning"] = tuning
    return values


class DeprecatedTuningEnv(PydanticBaseSettingsSource):
    """The old flat `KILN_<KNOB>` variables of the tuning knobs, below every other source."""

    def get_field_value(self, field, field_name):  # unused: `__call__` reads the environment
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        return {name: environ[f"KILN_{name.upper()}"] for name in Tuning.model_fields
                if f"KILN_{name.upper()}" in environ}


class Settings(BaseSettings):
    """Everything Kiln reads from its environment. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__",
                                      extra="ignore")

    home: Path = Field(default=Path(".kiln"), description="Folder for embedded services and local storage.")
    database_url: str | None = Field(default=None, description="postgresql://user@host:port/db")
    redis_url: str | None = Field(default=None, description="redis://host:port/db or unix:///path")
    storage_url: str | None = Field(default=None, description="file:///path (default: $KILN_HOME/storage)")
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(default=0, description="API (granian) processes; 0 = one per usable CPU")
    api_threads: int = 8
    max_waiting_requests: int = Field(
        default=4, ge=0,
        description="per API process: `GET /v1/jobs/{id}?wait` requests held at once (each holds "
                    "a request thread); more answer at once")
    worker_concurrency: int = Field(default=0, description="Celery prefork children; 0 = CPU count")
    queue: str = "cpu"
    gpu_queue: str = Field(default="gpu", description="queue of jobs that need a GPU")
    ort_threads: int = Field(default=0, description="ONNX Runtime intra-op threads; 0 = cores / concurrency")
    progress_event_seconds: float = Field(
        default=60.0, description="at most one job.progress webhook per job per this many seconds")
    max_attempts: int = 3
    lease_seconds: float = 30.0
    stall_seconds: float = Field(
        default=900.0, ge=0,
        description="a file phase (validating, a chunk, finalizing) that reaches none of its "
                    "checkpoints for this long lets its lease go, for another attempt; 0 = never")
    queued_grace_seconds: float = 10.0
    reconcile_interval_seconds: float = 5.0
    max_inline_inputs: int = 10_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 2 * 1024**3
    max_running_chunks_per_job: int = Field(
        default=4, description="chunks of one file job queued or running at once (fair share)")
    max_running_chunks_per_tenant: int = Field(
        default=0, ge=0,
        description="chunks of all of one tenant's file jobs queued or running at once; 0 = no limit")
    max_queued_rows: int = Field(
        default=0, ge=0, description="instance-wide backlog: rows of live jobs; 0 = no limit")
    tenant_max_queued_rows: int = Field(
        default=0, ge=0, description="a tenant's default limit on rows of its live jobs; 0 = none")
    tenant_max_active_jobs: int = Field(
        default=0, ge=0, description="a tenant's default limit on its live jobs; 0 = none")
    tenant_max_storage_bytes: int = Field(
        default=0, ge=0, description="a tenant's default limit on its stored files; 0 = none")
    tenant_submits_per_second: float = Field(
        default=0.0, ge=0, description="a tenant's default submit rate limit; 0 = none")
    tenant_submit_burst: int = Field(
        default=0, ge=0, description="submits allowed at once over the rate; 0 = the rate")
    file_retention_seconds: float = Field(
        default=0.0, ge=0, description="uploads are deleted this long after upload; 0 = kept")
    result_retention_seconds: float = Field(
        default=30 * 86400.0, ge=0,
        description="a job's results are deleted this long after it ends; 0 = kept")
    estimate_rows_per_second: float = Field(
        default=1000.0, gt=0, description="an estimate's rate when the tenant has no recent jobs")
    sweep_batch: int = Field(default=500, ge=1,
                             description="jobs, files or stored objects one sweeper step removes")
    quota_retry_after_seconds: int = Field(
        default=5, ge=1, description="Retry-After of a 429 for a quota (not the rate limit)")
    visibility_timeout_seconds: int = 3600
    soft_shutdown_seconds: float = 10.0
    log_level: str = "INFO"
    log_format: Literal["text", "json"] | None = Field(
        default=None, description="json: one JSON object per line with request_id, job_id...; "
        "unset: json for kiln api/worker outside a terminal, text in one and under kiln up")
    tuning: Tuning = Field(default_factory=Tuning, description="see `Tuning` and docs/tuning.md")
    secret_key: str | None = Field(default=None, description="Encrypts stored webhook secrets; "
                                   "unset: generated once into $KILN_HOME/secret.key")
    ui_session_seconds: float = Field(default=12 * 3600, gt=0,
                                      description="How long a dashboard sign-in lasts")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_schedule_seconds: Annotated[list[float], NoDecode] = Field(
        default=[0, 5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Delay before each attempt; the first is 0 (at once), the length is the limit")
    webhook_allow_private: bool = Field(default=False,
                                        description="Allow http and loopback/private targets")
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[], description="Comma-separated hosts or CIDRs trusted as webhook targets")
    webhook_concurrency: int = Field(default=8, ge=1, description="Deliveries in flight per worker")
    metrics_enabled: bool = Field(default=True,
                                  description="Serve Prometheus GET /metrics on the API")
    metrics_token: str | None = Field(
        default=None, description="When set, GET /metrics needs `Authorization: Bearer <token>`")
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="`kiln worker` serves Prometheus metrics on this port; 0 = off")
    worker_metrics_host: str = Field(default="0.0.0.0",
                                     description="Address the worker metrics server binds")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                DeprecatedTuningEnv(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _deprecated_flat_tuning(cls, values: Any) -> Any:
        return _nest_deprecated(values) if isinstance(values, dict) else values

    @field_validator("max_attempts", "max_inline_inputs")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("webhook_retry_schedule_seconds", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or value[0] != 0 or any(delay < 0 for delay in value):
            raise ValueError("needs at least one delay, the first 0 (the first attempt is at once)")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is not None:
            sqlalchemy_url(value)
        return value

    @cached_property
    def services_file(self) -> Path:
        return self.home / "services.json"

    def with_embedded(self) -> Settings:
        """Fill unset URLs from the embedded services that `kiln up` records under `home`."""
        if self.database_url and self.redis_url:
            return self
        try:
            recorded = json.loads(self.services_file.read_text())
        except (FileNotFoundError, ValueError):
            return self
        return self.model_copy(update={
            "database_url": self.database_url or recorded.get("database_url"),
            "redis_url": self.redis_url or recorded.get("redis_url"),
        })

    @property
    def sqlalchemy_url(self) -> str:
        if not self.database_url:
            raise RuntimeError("KILN_DATABASE_URL is not set and no embedded database is running "
                               "(start one with `kiln up`)")
        return sqlalchemy_url(self.database_url)

    @property
    def broker_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("KILN_REDIS_URL is not set and no embedded Redis is running "
                               "(start one with `kiln up`)")
        return kombu_url(self.redis_url)

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.home.resolve() / "storage").as_uri()

    @property
    def lease_heartbeat_seconds(self) -> float:
        return self.tuning.heartbeat_seconds or max(self.lease_seconds / 3, 0.2)

    @property
    def effective_concurrency(self) -> int:
        return self.worker_concurrency or cpus()

    @property
    def effective_api_workers(self) -> int:
        """One process per usable CPU, each running `api_threads` request threads: a process
        spends its CPU only on requests, and under granian one process is bound by its GIL
        before a core is (docs/tuning.md)."""
        return self.api_workers or cpus()


def load_settings(**overrides) -> Settings:
    """Build settings from the environment, then attach embedded services if any are running."""
    return Settings(**overrides).with_embedded()
