"""The chaos test's clients: the jobs to submit, submitting them with retries, a log of every answer.

A client that gets no answer, or a 5xx, retries with the same `Idempotency-Key`; a job "got a 202"
when any of those tries was answered 202.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = [f"p{i}" for i in range(64)]


@dataclass(frozen=True)
class Call:
    """One HTTP request: its answer's status, or None when there was no answer."""

    started: float
    ended: float
    method: str
    path: str
    status: int | None
    error: str | None = None


class HttpLog:
    """Sends requests and records each outcome with its (monotonic) times."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def send(self, http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self._add(Call(started, time.monotonic(), method, path, None, type(exc).__name__))
            return None
        self._add(Call(started, time.monotonic(), method, path, response.status_code))
        return response

    def _add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


@dataclass
class PlannedJob:
    """A job the test will submit, and what its results must be."""

    number: int
    tenant: str
    kind: str
    rows: int
    bad_rows: frozenset[int]
    body: dict[str, Any]
    at_seconds: float
    file_name: str | None = None
    file_bytes: bytes | None = None

    @property
    def key(self) -> str:
        return f"chaos-{self.number:04d}"


@dataclass
class Submission:
    planned: PlannedJob
    job_id: str | None = None
    accepted_at: float | None = None
    tries: int = 0
    uploads: int = 0
    failure: str | None = None


def plan_jobs(tenants: list[str], webhook_url: Callable[[str], str], *, inline: int, files: int,
              spread_seconds: float, seed: int = 7) -> list[PlannedJob]:
    """A shuffled mix of inline jobs (1-120 records, a few of 400) and CSV/JSONL/Parquet file jobs
    (600-2400 rows, 1% of the CSV and JSONL rows malformed), spread evenly over the run."""
    rng = np.random.default_rng(seed)
    kinds = ["inline"] * inline + ["file"] * files
    rng.shuffle(kinds)
    planned = []
    for number, kind in enumerate(kinds):
        tenant = tenants[number % len(tenants)]
        common = {"model": "digits", "metadata": {"chaos": number},
                  "webhook_url": webhook_url(tenant)}
        at = spread_seconds * number / len(kinds)
        if kind == "inline":
            rows = 400 if number % 25 == 0 else int(rng.integers(1, 121))
            pixels = rng.integers(0, 17, size=(rows, 64))
            inputs = [{c: int(v) for c, v in zip(COLUMNS, row)} for row in pixels]
            planned.append(PlannedJob(number, tenant, kind, rows, frozenset(),
                                      {**common, "inputs": inputs}, at))
            continue
        fmt = ("csv", "jsonl", "parquet")[number % 3]
        rows = int(rng.integers(600, 2401))
        bad = frozenset() if fmt == "parquet" else frozenset(
            int(i) for i in rng.choice(rows, size=rows // 100, replace=False))
        data = encode_file(fmt, number, rng.integers(0, 17, size=(rows, 64)), bad)
        planned.append(PlannedJob(number, tenant, kind, rows, bad,
                                  {**common, "keep_columns": ["truth"]}, at,
                                  f"chaos-{number}.{fmt}", data))
    return planned


def encode_file(fmt: str, number: int, pixels: np.ndarray, bad: frozenset[int]) -> bytes:
    records = []
    for i, row in enumerate(pixels):
        record = {"custom_id": f"job{number}-row{i}", "truth": i % 10}
        record.update({c: int(v) for c, v in zip(COLUMNS, row)})
        if i in bad:
            record["p5"] = "bad"
        records.append(record)
    if fmt == "jsonl":
        return b"".join(orjson.dumps(r) + b"\n" for r in records)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue().encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), sink)
    return sink.getvalue()


def submit(log: HttpLog, http: httpx.Client, planned: PlannedJob, *,
           give_up_seconds: float) -> Submission:
    """Upload (file jobs), then POST /v1/jobs until a 202, retrying transport errors and 5xx."""
    done = Submission(planned)
    body = planned.body
    deadline = time.monotonic() + give_up_seconds
    pause = 0.2
    while time.monotonic() < deadline:
        if planned.kind == "file" and "input_file" not in body:
            done.uploads += 1
            response = log.send(http, "POST", "/v1/files",
                                files={"file": (planned.file_name, planned.file_bytes)})
            if response is not None and response.status_code == 201:
                body = {**body, "input_file": response.json()["id"]}
            elif response is not None and response.status_code < 500:
                done.failure = f"upload answered {response.status_code}: {response.text[:300]}"
                return done
            else:
                pause = _wait(pause)
                continue
        done.tries += 1
        response = log.send(http, "POST", "/v1/jobs", json=body,
                            headers={"Idempotency-Key": planned.key})
        if response is not None and response.status_code == 202:
            done.job_id, done.accepted_at = response.json()["id"], time.monotonic()
            return done
        if response is not None and response.status_code < 500:
            done.failure = f"submit answered {response.status_code}: {response.text[:300]}"
            return done
        pause = _wait(pause)
    done.failure = f"no 202 after {done.tries} tries in {give_up_seconds:g}s"
    return done


def _wait(pause: float) -> float:
    time.sleep(pause)
    return min(pause * 1.5, 2.0)


def probe(log: HttpLog, http: httpx.Client, stopping: threading.Event, every_seconds: float) -> None:
    """Keep asking the API something that needs Postgres, to see when it answers 5xx."""
    while not stopping.wait(every_seconds):
        log.send(http, "GET", "/v1/jobs", params={"limit": 5})
