"""What a request that waits costs the server, measured in one run: a bare Flask route under
granian (the processes and threads of `kiln api`), answering at once against the same route
waiting a few milliseconds before it answers, as every Kiln submit waits for its commit.

    python -m bench.server_overhead [--requests 5000] [--clients 16] [--wait-ms 4]
                                    [--cpu-policies normal,batch]

No database and no Kiln code: the route parses a one-record `digits` body and answers 202, so
the difference between the two phases is the wait (and the lower request rate it brings). It reports the server's CPU per
request (granian's processes, from psutil) for each phase and their ratio, with the server
under each Linux scheduling policy asked for (`KILN_TUNING__CPU_POLICY`: `batch` is Kiln's default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import orjson
import psutil
from flask import Flask, Response, request

from bench import with_policy
from bench.loadgen import post_request, run_load
from tests import support

app = Flask("server-overhead")
WAIT_SECONDS = float(os.environ.get("BENCH_WAIT_MS", "0")) / 1000


@app.post("/v1/jobs")
def submit() -> Response:
    body = request.get_json()
    if WAIT_SECONDS:
        time.sleep(WAIT_SECONDS)  # where a Kiln submit waits for its group commit
    return Response(orjson.dumps({"object": "job", "records": len(body["inputs"])}), status=202,
                    mimetype="application/json")


def server_cpu(pid: int) -> float:
    parent = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [parent, *parent.children(recursive=True)])


def phase(wait_ms: float, requests: int, clients: int, workers: int, threads: int,
          cpu_policy: str = "normal") -> dict:
    port = support.free_port()
    server = subprocess.Popen(with_policy.command(cpu_policy, [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", str(workers),
        "--blocking-threads", str(threads), "--port", str(port), "--no-ws",
        "bench.server_overhead:app"]), env=dict(os.environ, BENCH_WAIT_MS=str(wait_ms)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    body = orjson.dumps({"model": "digits", "inputs": [{f"p{i}": 1.0 for i in range(64)}]})
    raw = post_request(url, "/v1/jobs", body, {"Authorization": "Bearer bench"})
    try:
        support.wait_for(lambda: _answers(url, raw), timeout=30, message="the bench server")
        run_load(url, 500, 4, lambda _: raw)  # warm up every process and connection
        before, start = server_cpu(server.pid), time.perf_counter()
        load = run_load(url, requests, clients, lambda _: raw)
        seconds = time.perf_counter() - start
        assert load.statuses == {202: requests}, load.statuses
        return {"per_s": requests / seconds,
                "cpu_us": (server_cpu(server.pid) - before) / requests * 1e6}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _answers(url: str, raw: bytes) -> bool:
    try:
        return run_load(url, 1, 1, lambda _: raw).statuses == {202: 1}
    except (OSError, EOFError):  # refused, or closed by a server still starting
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--wait-ms", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu-policies", default="normal,batch",
                        help="comma-separated scheduling policies to serve under, each round")
    args = parser.parse_args()
    policies = args.cpu_policies.split(",")
    from app.settings import Settings

    settings = Settings()
    workers, threads = settings.effective_api_workers, settings.api_threads
    print(f"granian {workers} processes x {threads} threads, {args.clients} clients, "
          f"{args.requests} requests per phase\n")
    print("| round | CPU policy | at once (req/s) | at once (server CPU us/req) "
          f"| waiting {args.wait_ms:g} ms (req/s) | waiting (server CPU us/req) | CPU ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for round_ in range(1, args.rounds + 1):  # interleaved: the machine's speed drifts
        for policy in policies:
            plain = phase(0, args.requests, args.clients, workers, threads, policy)
            waiting = phase(args.wait_ms, args.requests, args.clients, workers, threads, policy)
            print(f"| {round_} | {policy} | {plain['per_s']:,.0f} | {plain['cpu_us']:.0f} "
                  f"| {waiting['per_s']:,.0f} | {waiting['cpu_us']:.0f} "
                  f"| {waiting['cpu_us'] / plain['cpu_us']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
