"""A trickle of one-record jobs from one tenant while another tenant's large file job runs.

    python -m bench.mixed [--rows 500000] [--small 20] [--check-ms 20,0] [--concurrency 2]
                          [--rounds 3]

Tenant A uploads a digits CSV and scores it as a file job; once it runs, tenant B submits
`--small` one-record jobs one after another, each followed to `succeeded` by one held request
(`GET /v1/jobs/{id}?wait`; `--poll-ms 5`: a read every 5 ms instead). Reported:
B's latency (submit to `succeeded` seen by the client) p50 / p95 / max, and A's rows/s (job
started → succeeded) alone and with the trickle. Each `--check-ms` value is a fresh worker with
`KILN_TUNING__SMALL_JOB_CHECK_MS` set to it (0 = small jobs wait for a chunk to end).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from app.client import KilnClient
from bench.bulk import start_kiln, write_input
from tests import support
from workers.demo_models import DIGITS_COLUMNS


def one_record(i: int) -> list[dict]:
    return [{c: float((i + j) % 17) for j, c in enumerate(DIGITS_COLUMNS)}]


def small_job_latency(client: KilnClient, model: str, i: int, poll: float = 0.0) -> float:
    """Seconds from submitting a one-record job to seeing it `succeeded`: one held request
    (`?wait`), or with `poll`, a read every `poll` seconds."""
    start = time.perf_counter()
    job = client.submit(model, one_record(i))
    while job["status"] != "succeeded":
        assert job["status"] in ("queued", "running"), job
        if poll:
            time.sleep(poll)
        job = client.job(job["id"], wait=0 if poll else 10)
    return time.perf_counter() - start


def trickle(client: KilnClient, model: str, count: int, poll: float = 0.0) -> list[float]:
    return [small_job_latency(client, model, i, poll) for i in range(count)]


def wait_running(client: KilnClient, job_id: str, timeout: float = 120) -> dict:
    """The file job once it is scoring (some chunk claimed), for the trickle to overlap it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["status"] == "running":
            return job
        assert job["status"] in ("queued", "validating"), job
        time.sleep(0.02)
    raise TimeoutError(f"file job {job_id} never started")


def file_rate(done: dict, rows: int) -> float:
    assert done["status"] == "succeeded", done
    seconds = (datetime.fromisoformat(done["finished_at"])
               - datetime.fromisoformat(done["started_at"])).total_seconds()
    return rows / seconds


def mixed_round(bulk: KilnClient, small: KilnClient, file_id: str, rows: int, count: int,
                poll: float = 0.0) -> dict:
    job = bulk.submit_file("digits", file_id, output_format="csv")
    wait_running(bulk, job["id"])
    time.sleep(0.3)  # inside the first chunk's batches
    latencies = trickle(small, "digits", count, poll)
    overlapped = bulk.job(job["id"])["status"] == "running"
    done = bulk.wait(job["id"], timeout_seconds=3600, poll_seconds=0.1)
    return {"latencies": latencies, "rate": file_rate(done, rows), "overlapped": overlapped}


def alone_round(bulk: KilnClient, file_id: str, rows: int) -> float:
    job = bulk.submit_file("digits", file_id, output_format="csv")
    return file_rate(bulk.wait(job["id"], timeout_seconds=3600, poll_seconds=0.1), rows)


def measure(env: dict, key: str, tmp: Path, file_path: Path, args, check_ms: str) -> dict:
    env = {**env, "KILN_TUNING__SMALL_JOB_CHECK_MS": check_ms,
           "KILN_WORKER_CONCURRENCY": str(args.concurrency)}
    key_b = support.run_kiln(env, "keys", "create", "--tenant", f"interactive-{check_ms}"
                             ).stdout.strip().splitlines()[-1]
    api, worker = support.start_api_and_worker(env, tmp)
    try:
        bulk, small = KilnClient(api.url, key), KilnClient(api.url, key_b)
        small_job_latency(small, "digits", 0)  # load the model and warm the path
        file_id = bulk.upload(file_path)["id"]
        alone, rates, latencies, overlapped = [], [], [], True
        for _ in range(args.rounds):  # alternating, so that drift on the machine hits both
            alone.append(alone_round(bulk, file_id, args.rows))
            mixed = mixed_round(bulk, small, file_id, args.rows, args.small,
                                args.poll_ms / 1000)
            rates.append(mixed["rate"])
            latencies += mixed["latencies"]
            overlapped = overlapped and mixed["overlapped"]
    finally:
        worker.stop()
        api.stop()
    return {"check_ms": check_ms, "alone": alone, "rates": rates, "latencies": latencies,
            "overlapped": overlapped}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(args, results: list[dict]) -> None:
    print("\n| `SMALL_JOB_CHECK_MS` | small jobs | p50 ms | p95 ms | max ms | file job alone, "
          "rows/s | with the trickle, rows/s | change |\n| --- | --- | --- | --- | --- | --- | "
          "--- | --- |")
    for r in results:
        ms = [v * 1000 for v in r["latencies"]]
        alone, rate = statistics.median(r["alone"]), statistics.median(r["rates"])
        print(f"| {r['check_ms']} | {len(ms)}{'' if r['overlapped'] else ' (file ended first)'} "
              f"| {statistics.median(ms):.0f} | {percentile(ms, 95):.0f} | {max(ms):.0f} "
              f"| {alone:,.0f} | {rate:,.0f} | {rate / alone - 1:+.1%} |")
    follow = (f"each read every {args.poll_ms:g} ms" if args.poll_ms
              else "each followed by one held request (?wait)")
    print(f"\n{args.rows:,}-row digits CSV file job (tenant A), one-record jobs of tenant B one "
          f"after another, {follow}; "
          f"`kiln worker -c {args.concurrency}`; rows/s are medians of "
          f"{args.rounds} alternating rounds, latencies pooled over them.")
    for r in results:
        print(f"rounds, check {r['check_ms']} ms: alone {[round(v) for v in r['alone']]}, "
              f"with the trickle {[round(v) for v in r['rates']]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--check-ms", default="20,0")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--poll-ms", type=float, default=0,
                        help="the small jobs' client reads each job this often; 0 = one held "
                             "request (GET /v1/jobs/{id}?wait)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds alone / with the trickle, per --check-ms value")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not support.local_postgres_up() or not support.local_redis_up():
        print("needs the local Postgres and Redis", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="kiln-mixed-"))
    file_path = tmp / "digits.csv"
    write_input(file_path, args.rows)
    name, env, key = start_kiln(tmp, args.chunk_rows)
    try:
        results = [measure(env, key, tmp, file_path, args, value)
                   for value in args.check_ms.split(",")]
    finally:
        support.drop_database(support.LOCAL_POSTGRES, name)
    for r in results:
        print(r["check_ms"], [round(v * 1000) for v in r["latencies"]], flush=True)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
