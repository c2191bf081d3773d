"""What admission adds to a submit when nothing limits it, in two parts:

    python -m bench.admission_cost

1. `Admission.writer_for` for a tenant without limits (a cache hit), per call.
2. The partial index `ix_jobs_live_by_tenant` on the submit INSERT: one-record jobs written in
   statements of 5 rows (the group-commit writer under load), rounds alternating with and
   without the index, on a scratch database of the local Postgres.
"""

from __future__ import annotations

import time
import uuid

from app.caching import LoadingCache
from app.db import connect, make_engine
from app.migrate import upgrade
from app.services.admission import Admission
from app.services.auth import Caller
from app.services.jobs import NewJob, insert_jobs_on, job_row
from app.services.limits import Limits
from app.settings import Settings
from tests import support

LIVE_INDEX = ("CREATE INDEX ix_jobs_live_by_tenant ON jobs (tenant_id) INCLUDE (total_count) "
              "WHERE status IN ('validating', 'queued', 'running', 'finalizing', 'cancelling')")


def writer_for_cost(calls: int = 200_000) -> float:
    """Microseconds per `writer_for` of an unlimited tenant."""
    admission = Admission(Settings(), sessions=None, cache=LoadingCache(10_000, 60))
    caller, writer = Caller(uuid.uuid4(), "t"), object()
    admission.cache.get(("limits", caller.tenant_id), Limits)
    began = time.perf_counter()
    for _ in range(calls):
        admission.writer_for(caller, writer)
    return (time.perf_counter() - began) / calls * 1e6


def insert_cost(conn, tenant: uuid.UUID, model: uuid.UUID, jobs: int = 10_000) -> float:
    """Microseconds (wall) per one-record job inserted 5 to a statement."""
    record = {f"p{i}": 1.0 for i in range(64)}
    began = time.perf_counter()
    for _ in range(jobs // 5):
        insert_jobs_on(conn, [job_row(NewJob(
            tenant_id=tenant, model_id=model, model_name="m", kind="inline", status="queued",
            total_count=1, inputs=[record], options={}, job_metadata={})) for _ in range(5)])
    return (time.perf_counter() - began) / jobs * 1e6


def index_cost(rounds: int = 3) -> dict[str, list[int]]:
    name = f"kiln_bench_{uuid.uuid4().hex[:8]}"
    url = support.create_database(support.LOCAL_POSTGRES, name)
    try:
        settings = support.settings_from_env({"KILN_DATABASE_URL": url})
        upgrade(settings)
        conn = connect(make_engine(settings), autocommit=True)
        tenant, model = uuid.uuid4(), uuid.uuid4()
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant,))
        conn.execute("INSERT INTO models (id, name, version, variant, format, uri, sha256, "
                     "signature, processing, metrics, provenance, aliases) VALUES "
                     "(%s, 'm', 1, 'fp32', 'onnx', 'x', 'x', '{}', '{}', '{}', '{}', '[]')",
                     (model,))
        results: dict[str, list[int]] = {"with": [], "without": []}
        for _ in range(rounds):
            for mode in results:
                conn.execute("DROP INDEX IF EXISTS ix_jobs_live_by_tenant")
                if mode == "with":
                    conn.execute(LIVE_INDEX)
                results[mode].append(round(insert_cost(conn, tenant, model)))
                conn.execute("TRUNCATE jobs CASCADE")
        conn.close()
        return results
    finally:
        support.drop_database(support.LOCAL_POSTGRES, name)


def main() -> None:
    print(f"writer_for, unlimited tenant (cached): {writer_for_cost():.2f} us per submit")
    print(f"INSERT, us per job by round: {index_cost()}")


if __name__ == "__main__":
    main()
