"""One very large file job on `kiln up` with default settings, timed phase by phase.

    python -m bench.long_job [--rows 15000000] [--gzip]

Writes a digits CSV (id + 64 features; gzip by default, as users upload large files), starts
`kiln up` in a fresh KILN_HOME (embedded Postgres and Redis, every setting at its default),
uploads the file, submits it and polls the job, noting when it enters each status: so the
report shows how long validating (one streaming pass over the file), the chunks and finalizing
(the join of every part) took, with the default 30 s lease. It then checks the job succeeded
with every row scored once, and stops Kiln.
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from app.client import KilnClient
from tests import support
from workers.demo_models import DIGITS_COLUMNS, digits_split

BLOCK_ROWS = 250_000


def write_input(path: Path, rows: int, gzip: bool) -> None:
    """The digits features repeated to `rows` rows, with a `custom_id`, written block by block
    (gzip level 1 through Python's zlib: pyarrow's gzip stream writes at well under 1 MB/s)."""
    x_train, x_test, _, _ = digits_split()
    features = np.concatenate([x_test, x_train]).astype(np.int64)
    with (gzip_module.open(path, "wb", compresslevel=1) if gzip else path.open("wb")) as sink:
        for start in range(0, rows, BLOCK_ROWS):
            index = np.arange(start, min(start + BLOCK_ROWS, rows))
            block = features[index % len(features)]
            columns = {"custom_id": pa.array([f"r{i}" for i in index])}
            columns.update({name: pa.array(block[:, j]) for j, name in enumerate(DIGITS_COLUMNS)})
            buffer = io.BytesIO()
            pacsv.write_csv(pa.table(columns), buffer,
                            pacsv.WriteOptions(include_header=start == 0))
            sink.write(buffer.getvalue())


def start_kiln_up(home: Path, port: int) -> subprocess.Popen:
    env = support.test_env({"KILN_HOME": str(home), "KILN_API_PORT": str(port)})
    process = subprocess.Popen(support.kiln_command("up"), env=env,
                               stdout=(home / "up.log").open("wb"), stderr=subprocess.STDOUT)
    support.wait_for(lambda: _healthy(port), timeout=180, interval=0.5, message="kiln up")
    return process


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def follow(kiln: KilnClient, job_id: str, timeout_seconds: float) -> tuple[dict, dict[str, float]]:
    """Poll the job; returns its final view and the monotonic time it was first seen in each
    status."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        job = kiln.job(job_id)
        seen.setdefault(job["status"], time.monotonic())
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job, seen
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not end in {timeout_seconds} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=15_000_000)
    parser.add_argument("--plain", action="store_true", help="plain CSV instead of gzip")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kiln-long-"))
    home.chmod(0o755)  # pgserver runs Postgres as an unprivileged user when run as root
    source = home / ("digits.csv" if args.plain else "digits.csv.gz")
    started = time.perf_counter()
    write_input(source, args.rows, gzip=not args.plain)
    print(f"wrote {args.rows:,} rows, {source.stat().st_size / 1e6:,.0f} MB in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    port = support.free_port()
    up = start_kiln_up(home, port)
    try:
        env = support.test_env({"KILN_HOME": str(home)})
        key = support.run_kiln(env, "keys", "create", "--tenant", "long").stdout.split()[-1]
        kiln = KilnClient(f"http://127.0.0.1:{port}", key, timeout_seconds=3600)
        t0 = time.monotonic()
        meta = kiln.upload(source)
        uploaded = time.monotonic()
        job = kiln.submit_file("digits", meta["id"], output_format="csv")
        done, seen = follow(kiln, job["id"], timeout_seconds=6 * 3600)
        ended = time.monotonic()
        rows = sum(piece.count(b"\n") for piece in kiln.iter_results(job["id"])) - 1
        downloaded = time.monotonic()
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
    job_seconds = (datetime.fromisoformat(done["finished_at"])
                   - datetime.fromisoformat(done["started_at"])).total_seconds()
    phases = [("validating", "running"), ("running", "finalizing"), ("finalizing", done["status"])]
    print(f"\nstatus {done['status']}, error {done['error']}, counts {done['request_counts']}, "
          f"attempt {done['attempt']}, result rows downloaded {rows:,}\n")
    print(f"| {args.rows:,}-row {'CSV' if args.plain else 'gzip CSV'} on `kiln up` (defaults) "
          "| seconds |\n| --- | --- |")
    print(f"| upload | {uploaded - t0:.0f} |")
    for first, then in phases:
        if first in seen and then in seen:
            print(f"| {first} (first seen → {then} first seen, 0.5 s polls) "
                  f"| {seen[then] - seen[first]:.0f} |")
    print(f"| job: started_at → finished_at | {job_seconds:.0f} ({args.rows / job_seconds:,.0f} "
          "rows/s) |")
    print(f"| submit → terminal seen | {ended - uploaded:.0f} |")
    print(f"| download of the results | {downloaded - ended:.0f} |")
    ok = done["status"] == "succeeded" and rows == args.rows and \
        done["request_counts"]["completed"] == args.rows
    print("\nOK" if ok else "\nNOT OK", f"(logs: {home / 'up.log'})")
    if ok:
        os.remove(source)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
