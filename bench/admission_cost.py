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
from app.services.admission import Admission
from app.services.auth import Caller
from app.services.limits import Limits
from app.settings import Settings
from bench.scratch import insert_cost, scratch_database

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


def index_cost(rounds: int = 3) -> dict[str, list[int]]:
    with scratch_database() as (conn, tenant, model):
        results: dict[str, list[int]] = {"with": [], "without": []}
        for _ in range(rounds):
            for mode in results:
                conn.execute("DROP INDEX IF EXISTS ix_jobs_live_by_tenant")
                if mode == "with":
                    conn.execute(LIVE_INDEX)
                results[mode].append(round(insert_cost(conn, tenant, model, 10_000)))
                conn.execute("TRUNCATE jobs CASCADE")
        return results


def main() -> None:
    print(f"writer_for, unlimited tenant (cached): {writer_for_cost():.2f} us per submit")
    print(f"INSERT, us per job by round: {index_cost()}")


if __name__ == "__main__":
    main()
