"""Bulk scoring through Kiln against raw pyarrow + ONNX Runtime in one process, same run.

    python -m bench.bulk [--rows 1000000] [--chunk-rows 50000] [--rounds 2] [--gzip]
    python -m bench.bulk --text [--rows 4000] [--rounds 2]   (minilm; bench/bulk_text.py)

Kiln: upload a digits CSV, score it as a file job on `kiln worker -c 2`, download the CSV
result. Baseline: the same file streamed with pyarrow (1 MiB blocks) into the same ONNX model
(2 intra-op threads) and written back as CSV, all in-process, as a user would hand-write it.
The two alternate (baseline, Kiln, baseline, Kiln, ...) on one running Kiln, so that a shared
machine's noise falls on both; every round is printed, then the pooled ratios. Peak RSS is the
sum over Kiln's processes (API, worker parent and its children), sampled every 100 ms in a
second Kiln round of its own: one sample of six processes costs about 12 ms of CPU in this
(the client's) process, 6% of a 2-core machine that the baseline's rounds never paid, so the
timed rounds run without the sampler.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import os
import shutil
import statistics
import threading
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv

from app.client import KilnClient
from tests import support
from workers.demo_models import DIGITS_COLUMNS, build_digits, digits_split


def write_input(path: Path, rows: int) -> None:
    x_train, x_test, _, _ = digits_split()
    features = np.resize(np.concatenate([x_test, x_train]).astype(int), (rows, 64))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["custom_id", *DIGITS_COLUMNS])
        for i, row in enumerate(features):
            writer.writerow([f"r{i}", *row.tolist()])


def baseline(source: Path, target: Path, artifact: bytes) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    reader = pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=1 << 20),
                            convert_options=pacsv.ConvertOptions(column_types={"custom_id": pa.string()}))
    writer = None
    for batch in reader:
        features = np.column_stack([batch.column(c).to_numpy().astype(np.float32)
                                    for c in DIGITS_COLUMNS])
        labels, probabilities = session.run(["label", "probabilities"], {"X": features})
        columns = {"custom_id": batch.column("custom_id"), "label": labels}
        columns.update({f"prob_{i}": probabilities[:, i] for i in range(10)})
        table = pa.table(columns)
        writer = writer or pacsv.CSVWriter(str(target), table.schema)
        writer.write_table(table)
    writer.close()
    return time.perf_counter() - start


class PeakRss:
    """The largest sums of RSS and of PSS over some processes and their children, sampled in a
    thread. RSS counts the pages a forked child shares with its parent once per process; PSS
    shares them out, so its sum is the memory the processes really hold together."""

    def __init__(self, pids: list[int]):
        self.pids, self.peak, self.peak_pss, self._stop = pids, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            total = pss = 0
            for pid in self.pids:
                try:
                    parent = psutil.Process(pid)
                    for process in [parent, *parent.children(recursive=True)]:
                        memory = process.memory_full_info()
                        total, pss = total + memory.rss, pss + memory.pss
                except psutil.NoSuchProcess:
                    continue
            self.peak, self.peak_pss = max(self.peak, total), max(self.peak_pss, pss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def kiln_round(kiln: KilnClient, source: Path, target: Path, pids: list[int] | None,
               model: str = "digits", output_format: str = "csv") -> dict:
    """Upload, score and download once; with `pids`, sample their summed RSS meanwhile."""
    with (PeakRss(pids) if pids else contextlib.nullcontext()) as rss:
        start = time.perf_counter()
        meta = kiln.upload(source)
        uploaded = time.perf_counter()
        job = kiln.submit_file(model, meta["id"], output_format=output_format)
        done = kiln.wait(job["id"], timeout_seconds=3600, poll_seconds=0.1)
        scored = time.perf_counter()
        with target.open("wb") as handle:
            for piece in kiln.iter_results(job["id"]):
                handle.write(piece)
        end = time.perf_counter()
    assert done["status"] == "succeeded", done
    # untimed: the round's upload and job go, so that rounds do not pile gigabytes on the disk
    kiln.delete_file(meta["id"])
    kiln.http.delete(f"/v1/jobs/{job['id']}").raise_for_status()
    job_seconds = (datetime.fromisoformat(done["finished_at"])
                   - datetime.fromisoformat(done["started_at"])).total_seconds()
    return {"job": job_seconds, "e2e": end - start, "upload": uploaded - start,
            "download": end - scored, "rss": rss.peak if rss else None,
            "pss": rss.peak_pss if rss else None}


def start_kiln(tmp: Path, chunk_rows: int, demo: str | None = "digits"):
    name = f"kiln_bulk_{uuid.uuid4().hex[:8]}"
    dsn = support.create_database(support.LOCAL_POSTGRES, name)
    redis_db = os.environ.get("KILN_TEST_REDIS_DB", "13")
    env = support.test_env({"KILN_DATABASE_URL": dsn,
                            "KILN_REDIS_URL": f"{support.LOCAL_REDIS}/{redis_db}",
                            "KILN_HOME": str(tmp), "KILN_QUEUE": f"bulk-{name}",
                            "KILN_WORKER_CONCURRENCY": "2",
                            "KILN_TUNING__CHUNK_ROWS": str(chunk_rows)})
    from app.migrate import upgrade
    from app.settings import Settings
    upgrade(Settings(database_url=dsn))
    if demo:
        support.run_kiln(env, "models", "add-demo", demo, timeout=900)
    key = support.run_kiln(env, "keys", "create", "--tenant", "bulk").stdout.strip().splitlines()[-1]
    return name, env, key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=None, help="default 1,000,000 (--text: 4,000)")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gzip", action="store_true", help="upload the CSV gzipped")
    parser.add_argument("--text", action="store_true",
                        help="minilm on sentences of 4-120 words (--rows defaults to 4000)")
    args = parser.parse_args()
    if args.text:
        from bench.bulk_text import main as text_main

        return text_main(args)
    args.rows = args.rows or 1_000_000
    if not support.local_postgres_up() or not support.local_redis_up():
        print("needs the local Postgres and Redis", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bulk-"))
    source = tmp / "digits.csv"
    write_input(source, args.rows)
    upload = source
    if args.gzip:
        upload = tmp / "digits.csv.gz"
        with source.open("rb") as raw, gzip.open(upload, "wb", compresslevel=1) as packed:
            shutil.copyfileobj(raw, packed)
    artifact = build_digits().artifact
    name, env, key = start_kiln(tmp, args.chunk_rows)
    api = support.start_api(env, tmp)
    worker = support.start_worker(env, tmp)
    rounds = []
    try:
        kiln = KilnClient(api.url, key, timeout_seconds=600)
        for _ in range(args.rounds):
            # each timed run starts with nothing dirty in the page cache: none pays for the
            # write-back of the bytes an earlier one wrote (at 10M rows, gigabytes)
            os.sync()
            raw = baseline(source, tmp / "baseline.csv", artifact)
            os.sync()
            measured = kiln_round(kiln, upload, tmp / "kiln.csv", None)
            os.sync()
            memory = kiln_round(kiln, upload, tmp / "kiln.csv",
                                [api.process.pid, worker.process.pid])
            rounds.append({"raw": raw, **measured, "rss": memory["rss"], "pss": memory["pss"],
                           "sampled": memory})
            print(f"round {len(rounds)}: raw {args.rows / raw:,.0f} rows/s, Kiln job "
                  f"{args.rows / measured['job']:,.0f} rows/s ({raw / measured['job']:.2f}x), "
                  f"end to end {raw / measured['e2e']:.2f}x; in the RSS round: peak RSS "
                  f"{memory['rss'] / 2**20:,.0f} MiB (PSS {memory['pss'] / 2**20:,.0f} MiB), "
                  f"job {raw / memory['job']:.2f}x, end to end {raw / memory['e2e']:.2f}x",
                  flush=True)
    finally:
        worker.stop()
        api.stop()
        support.drop_database(support.LOCAL_POSTGRES, name)
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, rounds)
    return 0


def report(args, rounds: list[dict]) -> None:
    rows = args.rows
    job = [r["raw"] / r["job"] for r in rounds]
    e2e = [r["raw"] / r["e2e"] for r in rounds]
    raw_rate = [rows / r["raw"] for r in rounds]
    job_rate = [rows / r["job"] for r in rounds]
    span = lambda values, f: "–".join(f.format(v) for v in (min(values), max(values)))  # noqa: E731
    print(f"""
| {rows:,} digits rows{' (gzip upload)' if args.gzip else ''}, CSV in → CSV out, {len(rounds)} rounds | min–max |
| --- | --- |
| raw pyarrow + ONNX Runtime, in-process (baseline), rows/s | {span(raw_rate, '{:,.0f}')} |
| Kiln job (started → succeeded), rows/s | {span(job_rate, '{:,.0f}')} |
| Kiln job vs baseline, same round | {span(job, '{:.2f}x')} (median {statistics.median(job):.2f}x) |
| Kiln end to end (upload + job + download) vs baseline | {span(e2e, '{:.2f}x')} |
| Kiln processes' peak RSS, summed (API + worker tree; the RSS rounds) | {span([r['rss'] / 2**20 for r in rounds], '{:,.0f} MiB')} |
| the same as PSS (shared pages counted once) | {span([r['pss'] / 2**20 for r in rounds], '{:,.0f} MiB')} |

upload {statistics.median(r['upload'] for r in rounds):.2f} s, download \
{statistics.median(r['download'] for r in rounds):.2f} s (medians); chunks of {args.chunk_rows:,} rows \
on `kiln worker -c 2`.
""")


if __name__ == "__main__":
    sys.exit(main())
