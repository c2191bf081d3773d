"""A scratch database on the local Postgres for the insert benchmarks: migrated to head, one
tenant and one model row; dropped afterwards."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from app.db import connect, make_engine
from app.migrate import upgrade
from app.services.jobs import NewJob, insert_jobs_on, job_row
from tests import support


@contextmanager
def scratch_database() -> Iterator[tuple[psycopg.Connection, uuid.UUID, uuid.UUID]]:
    """(an autocommit connection, a tenant id, a model id)."""
    name = f"kiln_bench_{uuid.uuid4().hex[:8]}"
    url = support.create_database(support.LOCAL_POSTGRES, name)
    try:
        settings = support.settings_from_env({"KILN_DATABASE_URL": url})
        upgrade(settings)
        with connect(make_engine(settings), autocommit=True) as conn:
            tenant, model = uuid.uuid4(), uuid.uuid4()
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant,))
            conn.execute("INSERT INTO models (id, name, version, variant, format, uri, sha256, "
                         "signature, processing, metrics, provenance, aliases) VALUES "
                         "(%s, 'm', 1, 'fp32', 'onnx', 'x', 'x', '{}', '{}', '{}', '{}', '[]')",
                         (model,))
            yield conn, tenant, model
    finally:
        support.drop_database(support.LOCAL_POSTGRES, name)


def insert_cost(conn, tenant: uuid.UUID, model: uuid.UUID, jobs: int,
                audit: dict | None = None) -> float:
    """Microseconds (wall) per one-record job inserted 5 to a statement (the group-commit
    writer under load), each with the audit keys `audit` when given."""
    record = {f"p{i}": 1.0 for i in range(64)}
    began = time.perf_counter()
    for _ in range(jobs // 5):
        insert_jobs_on(conn, [job_row(NewJob(
            tenant_id=tenant, model_id=model, model_name="m", kind="inline", status="queued",
            total_count=1, inputs=[record], options={}, job_metadata={}), audit)
            for _ in range(5)])
    return (time.perf_counter() - began) / jobs * 1e6
