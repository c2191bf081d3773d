"""What the audit log, JSON logs and (off) traces add, in three parts:

    python -m bench.audit_cost

1. The submit INSERT with and without its audit event: one-record jobs written 5 to a statement
   (the group-commit writer under load), rounds alternating, on a scratch database of the local
   Postgres. Rows without the audit keys skip the audit INSERT of the same statement.
2. Microseconds per log line formatted as text and as JSON (with a bound job and request).
3. Nanoseconds per `tracing.span` while traces are off (a model call, a publish).
"""

from __future__ import annotations

import io
import logging
import time
import uuid

from app import logs, origin, tracing
from bench.scratch import insert_cost, scratch_database

AUDIT = {"audit_action": "job.submit", "audit_actor": "kiln_0123abcd",
         "audit_request_id": "0" * 32, "audit_client_ip": "10.0.0.1"}


def audit_cost(rounds: int = 3) -> dict[str, list[int]]:
    with scratch_database() as (conn, tenant, model):
        results: dict[str, list[int]] = {"audited": [], "not audited": []}
        for _ in range(rounds):
            for mode in results:
                results[mode].append(round(insert_cost(
                    conn, tenant, model, 5_000, AUDIT if mode == "audited" else None)))
                conn.execute("TRUNCATE jobs CASCADE")
        return results


def log_line_cost(formatter: logging.Formatter, lines: int = 20_000) -> float:
    """Microseconds per INFO line written to memory through `formatter`."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    logger = logging.getLogger("kiln.bench.logs")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    token = origin.set_origin(request_id="0" * 32, tenant_id=str(uuid.uuid4()))
    try:
        with logs.bound(job_id=str(uuid.uuid4()), chunk=3):
            began = time.perf_counter()
            for i in range(lines):
                logger.info("scored %d rows of %d job(s) in %d batch(es)", i, 1, 1)
            return (time.perf_counter() - began) / lines * 1e6
    finally:
        origin.reset(token)


def span_off_cost(calls: int = 1_000_000) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        with tracing.span("kiln.model.run", rows=1):
            pass
    return (time.perf_counter() - began) / calls * 1e9


def main() -> None:
    print(f"INSERT, us per job by round: {audit_cost()}")
    print(f"log line, text: {log_line_cost(logs.text_formatter()):.1f} us; "
          f"json: {log_line_cost(logs.json_formatter()):.1f} us")
    print(f"tracing.span while off: {span_off_cost():.0f} ns")


if __name__ == "__main__":
    main()
