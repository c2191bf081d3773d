"""What the chaos test measures: leases left expired, rows per job, and the summary table."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from tests.chaos.stack import ChaosStack
from tests.chaos.traffic import HttpLog, Submission

# What a restarting Postgres raises (refused or dropped connections, "the database system is
# starting up", an admin shutdown): anything else, a broken query included, is a failure.
POSTGRES_RESTARTING = (OperationalError, InterfaceError)

OVERDUE_LEASES = text("""
SELECT 'job ' || id AS what, extract(epoch FROM now() - lease_expires_at) AS overdue
FROM jobs WHERE status = 'running' AND lease_expires_at < now()
UNION ALL
SELECT 'chunk ' || job_id || '/' || index, extract(epoch FROM now() - lease_expires_at)
FROM job_chunks WHERE status = 'running' AND lease_expires_at < now()
""")


def query(stack: ChaosStack, statement, params: dict[str, Any] | None = None,
          patience_seconds: float = 30.0) -> list[Any]:
    """Run a read on the stack's database, waiting out a Postgres restart."""
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            with stack.sessions() as session:
                return session.execute(statement, params or {}).all()
        except POSTGRES_RESTARTING:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class LeaseWatch(threading.Thread):
    """Samples running jobs and chunks whose lease has expired; the reconciler must return each
    to the queue within its period. Time Postgres spent down does not count as overdue."""

    def __init__(self, stack: ChaosStack, every_seconds: float = 0.25):
        super().__init__(name="chaos-lease-watch", daemon=True)
        self.stack, self.every = stack, every_seconds
        self.stopping = threading.Event()
        self.samples = 0
        self.worst: tuple[float, str] = (0.0, "")
        self.late: dict[str, float] = {}
        self.error: BaseException | None = None  # what stopped the watch, if not `stopping`
        self.started = self.stopped = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        try:
            self.watch()
        except BaseException as exc:  # noqa: BLE001 - reported by `check`, not lost with the thread
            self.error = exc
        self.stopped = time.monotonic()

    def watch(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                with self.stack.sessions() as session:
                    rows = session.execute(OVERDUE_LEASES).all()
            except POSTGRES_RESTARTING:
                continue
            sampled = time.monotonic()
            postgres = self.stack.outage("postgres")
            self.samples += 1
            for what, overdue in rows:
                overdue = float(overdue)
                if postgres is not None and postgres.up_at is not None:
                    overdue = min(overdue, sampled - postgres.up_at)
                self.worst = max(self.worst, (overdue, f"{what} at {sampled - self.stack.t0:.1f}s"))
                self.late[what] = max(self.late.get(what, 0.0), overdue)

    def over(self, bound_seconds: float) -> dict[str, float]:
        return {what: round(s, 2) for what, s in self.late.items() if s > bound_seconds}

    def check_sampled(self) -> None:
        """The watch ran to the end and sampled at least a quarter of its periods (Postgres is
        down a few seconds of a minute's run): a watch that saw nothing proves nothing."""
        assert self.error is None, f"the lease watch failed: {self.error!r}"
        periods = (self.stopped - self.started) / self.every
        assert periods > 0 and self.samples >= periods / 4, \
            f"the lease watch took {self.samples} samples in {periods:.0f} periods"


@dataclass
class RowTally:
    expected: int = 0
    results: int = 0
    errors: int = 0
    planted_errors: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected_errors: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, job: str, expected: set[int], results: list[int], errors: list[int],
            planted: frozenset[int]) -> None:
        seen = Counter(results) + Counter(errors)
        lost = len(expected - set(seen))
        duplicates = sum(n - 1 for n in seen.values()) + len(set(seen) - expected)
        wrong = set(errors) ^ set(planted)
        self.expected += len(expected)
        self.results += len(results)
        self.errors += len(errors)
        self.planted_errors += len(planted)
        self.lost += lost
        self.duplicates += duplicates
        self.unexpected_errors += len(wrong)
        if lost or duplicates or wrong:
            self.problems.append(f"{job}: {lost} lost, {duplicates} duplicated, "
                                 f"errors differ from the planted bad rows at {sorted(wrong)[:10]}")


INLINE_ROWS = text("""
SELECT job_id::text AS job_id, index,
       coalesce(jsonb_typeof(CAST(error AS jsonb)), 'null') <> 'null' AS failed
FROM job_results
WHERE job_id = ANY(CAST(:ids AS uuid[]))
""")


def tally_rows(stack: ChaosStack, log: HttpLog, clients: dict[str, httpx.Client],
               accepted: list[Submission]) -> RowTally:
    """Inline jobs: their `job_results` rows in SQL. File jobs: their results and errors
    downloaded through the API. Each input row must appear exactly once in one of them."""
    tally = RowTally()
    inline = [s for s in accepted if s.planned.kind == "inline"]
    found: dict[str, tuple[list[int], list[int]]] = {s.job_id: ([], []) for s in inline}
    for job_id, index, failed in query(stack, INLINE_ROWS, {"ids": list(found)}):
        found[job_id][1 if failed else 0].append(index)
    for s in inline:
        results, errors = found[s.job_id]
        tally.add(s.job_id, set(range(s.planned.rows)), results, errors, s.planned.bad_rows)
    for s in accepted:
        if s.planned.kind != "file":
            continue
        http = clients[s.planned.tenant]
        pieces = []
        for what in ("results", "errors"):
            response = log.send(http, "GET", f"/v1/jobs/{s.job_id}/{what}",
                                params={"format": "jsonl"})
            if response is None or response.status_code != 200:
                tally.problems.append(f"{s.job_id}: GET {what} answered "
                                      f"{response.status_code if response else 'nothing'}")
                pieces.append([])
                continue
            pieces.append([orjson.loads(line)["row_index"]
                           for line in response.content.splitlines() if line.strip()])
        tally.add(s.job_id, set(range(s.planned.rows)), pieces[0], pieces[1], s.planned.bad_rows)
    return tally


def render_table(title: str, rows: list[tuple[str, str, str, bool | None]]) -> str:
    """Rows of (area, measure, value, ok) as a fixed-width table; ok None means informative."""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+------+"
    out = [line, f"| {title.ljust(sum(widths) + 6)} | ok?  |", line]
    for area, measure, value, ok in rows:
        mark = "" if ok is None else ("ok" if ok else "FAIL")
        out.append(f"| {area.ljust(widths[0])} | {measure.ljust(widths[1])} | "
                   f"{value.rjust(widths[2])} | {mark.ljust(4)} |")
    out.append(line)
    return "\n".join(out)
