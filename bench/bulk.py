"""Bulk scoring through Kiln against raw pyarrow + ONNX Runtime in one process, same run.

    python -m bench.bulk [--rows 200000] [--chunk-rows 50000]

Kiln: upload a digits CSV, score it as a file job on `kiln worker -c 2`, download the CSV
result. Baseline: the same file streamed with pyarrow (1 MiB blocks) into the same ONNX model
(2 intra-op threads) and written back as CSV, all in-process, as a user would hand-write it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bulk-"))
    source = tmp / "digits.csv"
    write_input(source, args.rows)
    artifact = build_digits().artifact
    raw_seconds = baseline(source, tmp / "baseline.csv", artifact)

    if not support.local_postgres_up() or not support.local_redis_up():
        print("needs the local Postgres and Redis", file=sys.stderr)
        return 2
    name = f"kiln_bulk_{uuid.uuid4().hex[:8]}"
    dsn = support.create_database(support.LOCAL_POSTGRES, name)
    env = support.test_env({"KILN_DATABASE_URL": dsn, "KILN_REDIS_URL": f"{support.LOCAL_REDIS}/13",
                            "KILN_HOME": str(tmp), "KILN_QUEUE": f"bulk-{name}",
                            "KILN_WORKER_CONCURRENCY": "2",
                            "KILN_TUNING__CHUNK_ROWS": str(args.chunk_rows)})
    from app.migrate import upgrade
    from app.settings import Settings
    upgrade(Settings(database_url=dsn))
    support.run_kiln(env, "models", "add-demo", "digits")
    key = support.run_kiln(env, "keys", "create", "--tenant", "bulk").stdout.strip().splitlines()[-1]
    api = support.start_api(env, tmp)
    worker = support.start_worker(env, tmp)
    try:
        kiln = KilnClient(api.url, key, timeout_seconds=600)
        start = time.perf_counter()
        meta = kiln.upload(source)
        uploaded = time.perf_counter()
        job = kiln.submit_file("digits", meta["id"], output_format="csv")
        done = kiln.wait(job["id"], timeout_seconds=1800, poll_seconds=0.1)
        scored = time.perf_counter()
        with (tmp / "kiln.csv").open("wb") as handle:
            for piece in kiln.iter_results(job["id"]):
                handle.write(piece)
        end = time.perf_counter()
    finally:
        worker.stop()
        api.stop()
        support.drop_database(support.LOCAL_POSTGRES, name)
    assert done["status"] == "succeeded", done
    job_seconds = (datetime.fromisoformat(done["finished_at"])
                   - datetime.fromisoformat(done["started_at"])).total_seconds()
    rows = args.rows
    print(f"""
| {rows:,} digits rows, CSV in → CSV out | seconds | rows/s | vs raw ORT |
| --- | --- | --- | --- |
| raw pyarrow + ONNX Runtime, in-process (baseline) | {raw_seconds:.2f} | {rows / raw_seconds:,.0f} | 1.00x |
| Kiln job: started → succeeded (validate, chunks, finalize) | {job_seconds:.2f} | {rows / job_seconds:,.0f} | {raw_seconds / job_seconds:.2f}x |
| Kiln end to end: upload + job + download | {end - start:.2f} | {rows / (end - start):,.0f} | {raw_seconds / (end - start):.2f}x |

upload {uploaded - start:.2f} s, queue + scoring {scored - uploaded:.2f} s, download {end - scored:.2f} s;
chunks of {args.chunk_rows:,} rows on `kiln worker -c 2`.
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
