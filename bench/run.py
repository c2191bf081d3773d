"""Kiln against plain Celery, measured in one run on this machine.

    python -m bench.run [--jobs 2000] [--latency-jobs 100] [--clients 16] [--repeat 1]
                        [--log-format text|json]

Starts its own database, `kiln api` (granian) and `kiln worker`, then the baseline Celery
worker, on the local Postgres and Redis (or embedded ones), and prints a Markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psycopg

from bench import with_policy
from bench.loadgen import post_request, run_load
from tests import support
from workers.demo_models import build_digits, digits_records, digits_split


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]


def wait_count(dsn: str, sql: str, target: int, timeout: float = 600) -> float:
    """Poll every 10 ms on one connection: a connection per poll would fork a Postgres backend
    each time, CPU taken from whatever is being measured."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute(sql).fetchone()[0] < target:
            if time.monotonic() > deadline:
                raise TimeoutError(sql)
            time.sleep(0.01)
    return time.perf_counter()


def kiln_bench(env: dict[str, str], logdir: Path, dsn: str, records: list[dict], jobs: int,
               latency_jobs: int, clients: int) -> dict:
    support.run_kiln(env, "models", "add-demo", "digits")
    key = support.run_kiln(env, "keys", "create", "--tenant", "bench").stdout.strip().splitlines()[-1]
    api = support.start_api(env, logdir)
    worker = support.start_worker(env, logdir)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=api.url, headers=headers, timeout=30) as http:
            for _ in range(20):  # warm up the model session and connection pools
                job = http.post("/v1/jobs", json={"model": "digits", "inputs": [records[0]]}).json()
            wait_count(dsn, "SELECT count(*) FROM jobs WHERE status = 'succeeded'", 20)

            latencies = []
            for i in range(latency_jobs):
                start = time.perf_counter()
                job = http.post("/v1/jobs", json={"model": "digits",
                                                  "inputs": [records[i % len(records)]]}).json()
                while http.get(f"/v1/jobs/{job['id']}").json()["status"] != "succeeded":
                    time.sleep(0.002)
                latencies.append((time.perf_counter() - start) * 1000)

        done_before = count(dsn, "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        auth = {"Authorization": f"Bearer {key}"}
        requests = [post_request(api.url, "/v1/jobs", orjson.dumps(
            {"model": "digits", "inputs": [records[i % len(records)]]}), auth)
            for i in range(jobs)]
        start = time.perf_counter()
        load = run_load(api.url, jobs, clients, requests.__getitem__)
        submitted = time.perf_counter()
        assert load.statuses == {202: jobs}, load.statuses
        submit_ms = load.latencies_ms
        end = wait_count(dsn, "SELECT count(*) FROM jobs WHERE status = 'succeeded'",
                         done_before + jobs)
        batches = [int(line.split("scored ")[1].split(" rows")[0])
                   for line in worker.log.read_text().splitlines() if "scored " in line]
    finally:
        worker.stop()
        api.stop()
    return {"latency_p50_ms": statistics.median(latencies),
            "latency_p99_ms": percentile(latencies, 99),
            "jobs_per_s": jobs / (end - start), "submit_seconds": submitted - start,
            "submit_p50_ms": statistics.median(submit_ms),
            "submit_p99_ms": percentile(submit_ms, 99),
            "batch_sizes": batches}


def baseline_bench(env: dict[str, str], logdir: Path, dsn: str, redis_url: str,
                   records: list[dict], jobs: int, clients: int, cpu_policy: str = "normal") -> dict:
    """Plain Celery, one task per record: enqueued straight from this process, then through
    the HTTP endpoint a user would put in front of it (`bench.baseline:http_app`, on the same
    server, processes and threads as `kiln api`). `cpu_policy` is the Linux scheduling policy of
    its worker and server (`normal`: what a user's glue gets; `batch`: what Kiln uses)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE baseline_results (id bigserial PRIMARY KEY, job int, output jsonb)")
    model = logdir / "digits.onnx"
    model.write_bytes(build_digits().artifact)
    queue = f"baseline-{uuid.uuid4().hex[:6]}"
    benv = dict(env, BASELINE_BROKER_URL=redis_url, BASELINE_DSN=dsn, BASELINE_MODEL=str(model),
                BASELINE_QUEUE=queue)
    log = (logdir / "baseline.log").open("wb")
    worker = subprocess.Popen(with_policy.command(cpu_policy, [
        sys.executable, "-m", "celery", "-A", "bench.baseline", "worker", "-c", "2",
        "-P", "prefork", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
        "-Q", queue, "--loglevel", "WARNING"]), env=benv, stdout=log, stderr=log)
    os.environ.update({k: v for k, v in benv.items() if k.startswith("BASELINE_")})
    from bench.baseline import app, score

    app.conf.broker_url = redis_url
    columns = [f"p{i}" for i in range(64)]
    vectors = [[r[c] for c in columns] for r in records]
    done = "SELECT count(*) FROM baseline_results WHERE job >= 0"
    try:
        for _ in range(20):
            score.apply_async(args=(-1, vectors[0]), queue=queue)
        wait_count(dsn, "SELECT count(*) FROM baseline_results", 20, timeout=120)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: score.apply_async(args=(i, vectors[i % len(vectors)]),
                                                      queue=queue), range(jobs)))
        direct = jobs / (wait_count(dsn, done, jobs) - start)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE baseline_results")
        http = http_baseline(benv, logdir, dsn, records, jobs, clients, done, cpu_policy)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    return {"jobs_per_s": direct, "http_jobs_per_s": http}


def http_baseline(env: dict[str, str], logdir: Path, dsn: str, records: list[dict], jobs: int,
                  clients: int, done: str, cpu_policy: str = "normal") -> float:
    from app.settings import Settings

    settings = Settings(api_workers=int(env.get("KILN_API_WORKERS", 0)),
                        api_threads=int(env.get("KILN_API_THREADS", Settings().api_threads)))
    port = support.free_port()
    log = (logdir / "baseline-http.log").open("wb")
    server = subprocess.Popen(with_policy.command(cpu_policy, [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(settings.effective_api_workers),
        "--blocking-threads", str(settings.api_threads), "bench.baseline:http_app"]),
        env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    bodies = [post_request(url, "/score", orjson.dumps(
        {"job": i, "inputs": [records[i % len(records)]]}), {}) for i in range(jobs)]
    try:
        warm = post_request(url, "/score", orjson.dumps({"job": -1, "inputs": records[:1]}), {})
        support.wait_for(lambda: _answers(url), timeout=30, message="the baseline HTTP server")
        run_load(url, 20, 4, lambda _: warm)
        start = time.perf_counter()
        load = run_load(url, jobs, clients, bodies.__getitem__)
        assert load.statuses == {202: jobs}, load.statuses
        return jobs / (wait_count(dsn, done, jobs) - start)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/score", timeout=1).status_code == 405  # POST only: it is up
    except httpx.HTTPError:
        return False


def histogram(sizes: list[int]) -> dict[str, int]:
    buckets = [(1, 1), (2, 8), (9, 64), (65, 256), (257, 1024), (1025, 10**9)]
    return {f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}": sum(lo <= s <= hi for s in sizes)
            for lo, hi in buckets}


def one_round(args, admin: str, redis_url: str, records: list[dict]) -> dict:
    """Kiln, then the baseline, each on a fresh database of its own round."""
    name = f"kiln_bench_{uuid.uuid4().hex[:8]}"
    logdir = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    dsn = support.create_database(admin, name)
    env = support.test_env({"KILN_DATABASE_URL": dsn, "KILN_REDIS_URL": redis_url,
                            "KILN_HOME": str(logdir), "KILN_QUEUE": f"bench-{name}",
                            "KILN_LOG_LEVEL": "INFO", "KILN_WORKER_CONCURRENCY": "2",
                            **({"KILN_API_WORKERS": str(args.api_workers)} if args.api_workers
                               else {}),
                            **({"KILN_API_THREADS": str(args.api_threads)} if args.api_threads
                               else {}),
                            **({"KILN_TUNING__CPU_POLICY": args.cpu_policy} if args.cpu_policy
                               else {}),
                            "KILN_LOG_FORMAT": args.log_format})
    from app.migrate import upgrade
    from app.settings import Settings
    upgrade(Settings(database_url=dsn))
    try:
        kiln = kiln_bench(env, logdir, dsn, records, args.jobs, args.latency_jobs, args.clients)
        base = baseline_bench(env, logdir, dsn, redis_url, records, args.jobs, args.clients,
                              args.baseline_cpu_policy)
    finally:
        support.drop_database(admin, name)
    return {"env": env, "kiln": kiln, "baseline": base,
            "ratio": kiln["jobs_per_s"] / base["jobs_per_s"],
            "http_ratio": kiln["jobs_per_s"] / base["http_jobs_per_s"]}


def pooled(rounds: list[dict], side: str, key: str) -> float:
    """Jobs/s over every round together: all jobs ÷ all their seconds (a harmonic mean), so a
    fast round counts no more than a slow one per job."""
    return len(rounds) / sum(1 / r[side][key] for r in rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="KILN_LOG_FORMAT of Kiln's processes (JSON logs cost: compare both)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, each Kiln then the baseline on a fresh database; the ratio "
                             "is reported per round and pooled over all of them")
    parser.add_argument("--api-workers", type=int, default=None,
                        help="KILN_API_WORKERS for the API under test (default: Kiln's default)")
    parser.add_argument("--api-threads", type=int, default=None,
                        help="KILN_API_THREADS for the API under test (default: Kiln's default)")
    parser.add_argument("--cpu-policy", choices=["batch", "normal"], default=None,
                        help="KILN_TUNING__CPU_POLICY for Kiln's API and worker "
                             "(default: Kiln's, batch)")
    parser.add_argument("--baseline-cpu-policy", choices=["batch", "normal"], default="normal",
                        help="scheduling policy of the baseline's worker and server (default: "
                             "normal, what plain Celery gets; batch gives it Kiln's)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    admin = support.LOCAL_POSTGRES if support.local_postgres_up() else None
    embedded = []
    serverdir = Path(tempfile.mkdtemp(prefix="kiln-bench-servers-"))
    if admin is None:
        from app.embedded import EmbeddedPostgres
        embedded.append(EmbeddedPostgres(serverdir))
        admin = embedded[-1].start()
    if support.local_redis_up():
        redis_url = f"{support.LOCAL_REDIS}/14"
    else:
        from app.embedded import EmbeddedRedis
        embedded.append(EmbeddedRedis(serverdir))
        redis_url = embedded[-1].start()
    _, x_test, _, _ = digits_split()
    records = digits_records(x_test)
    rounds = []
    try:
        for number in range(1, args.repeat + 1):
            rounds.append(one_round(args, admin, redis_url, records))
            if args.repeat > 1:
                last = rounds[-1]
                print(f"round {number}: Kiln {last['kiln']['jobs_per_s']:.0f} jobs/s, Celery "
                      f"{last['baseline']['jobs_per_s']:.0f} direct ({last['ratio']:.2f}x), "
                      f"{last['baseline']['http_jobs_per_s']:.0f} behind HTTP "
                      f"({last['http_ratio']:.2f}x)", file=sys.stderr, flush=True)
    finally:
        for server in embedded:
            server.stop()
    env = rounds[-1]["env"]
    kiln_rate = pooled(rounds, "kiln", "jobs_per_s")
    ratio = kiln_rate / pooled(rounds, "baseline", "jobs_per_s")
    http_ratio = kiln_rate / pooled(rounds, "baseline", "http_jobs_per_s")
    sizes = [size for r in rounds for size in r["kiln"]["batch_sizes"]]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "jobs": args.jobs,
              "clients": args.clients, "rounds": args.repeat,
              "api": f"{env.get('KILN_API_WORKERS', 'default')} processes x "
                     f"{env.get('KILN_API_THREADS', 'default')} threads",
              "cpu_policy": {"kiln": env.get("KILN_TUNING__CPU_POLICY", "default (batch)"),
                             "baseline": args.baseline_cpu_policy},
              "per_round": [{"kiln": {k: v for k, v in r["kiln"].items() if k != "batch_sizes"},
                             "baseline": r["baseline"], "ratio": r["ratio"],
                             "http_ratio": r["http_ratio"]} for r in rounds],
              "ratio": ratio, "http_ratio": http_ratio, "batch_size_histogram": histogram(sizes)}
    print(json.dumps(report, indent=2))
    rows = "\n".join(
        f"| {i} | {r['kiln']['jobs_per_s']:.0f} | {r['baseline']['jobs_per_s']:.0f} | "
        f"{r['ratio']:.2f}x | {r['baseline']['http_jobs_per_s']:.0f} | {r['http_ratio']:.2f}x | "
        f"{r['kiln']['submit_p50_ms']:.1f} / {r['kiln']['submit_p99_ms']:.1f} | "
        f"{r['kiln']['latency_p50_ms']:.1f} / {r['kiln']['latency_p99_ms']:.1f} |"
        for i, r in enumerate(rounds, 1))
    pooled_row = (f"\n| pooled | {kiln_rate:.0f} | {pooled(rounds, 'baseline', 'jobs_per_s'):.0f} | "
                  f"{ratio:.2f}x | {pooled(rounds, 'baseline', 'http_jobs_per_s'):.0f} | "
                  f"{http_ratio:.2f}x | | |" if len(rounds) > 1 else "")
    print(f"""
{args.jobs} one-record jobs, {args.clients} clients; jobs/s until all have succeeded.

| round | Kiln (jobs/s) | plain Celery task per record (jobs/s) | ratio | the same behind its own HTTP endpoint (jobs/s) | ratio | submit latency p50 / p99 under that load (ms) | idle submit→succeeded p50 / p99 (ms, {args.latency_jobs} jobs) |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}{pooled_row}

Batch sizes (rows per model call) during the throughput runs: {report['batch_size_histogram']}
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
