"""`python -m bench.bulk --text`: a minilm file job against the hand loop a user would write.

Input: JSONL sentences of 4-120 words (uniform, seeded, words drawn from the model's own
vocabulary). Baseline: the model's tokenizer and the same ONNX file under ONNX Runtime (2
intra-op threads), in file order, batches of 32 padded to their longest, JSONL written with
orjson, in one process. Kiln: upload, a file job on `kiln worker -c 2` (which sorts
KILN_TUNING__TEXT_BUCKET_ROWS rows of a chunk by token length before batching), download.
Rounds alternate as in bench/bulk.py; every Kiln answer is compared with the baseline's
(the lowest cosine over all rows is printed).
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from tokenizers import Tokenizer

from app.client import KilnClient
from bench import bulk
from bench.bulk import start_kiln
from tests import support

BATCH = 32


def write_sentences(path: Path, rows: int, tokenizer: Tokenizer, seed: int = 20) -> None:
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2)
    rng = random.Random(seed)
    with path.open("wb") as handle:
        for i in range(rows):
            text = " ".join(rng.choices(words, k=rng.randint(4, 120)))
            handle.write(orjson.dumps({"custom_id": f"s{i}", "text": text}) + b"\n")


def baseline(source: Path, target: Path, artifact: bytes, tokenizer: Tokenizer) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    records = [orjson.loads(line) for line in source.read_bytes().splitlines()]
    with target.open("wb") as out:
        for lo in range(0, len(records), BATCH):
            batch = records[lo:lo + BATCH]
            ids = [e.ids for e in tokenizer.encode_batch([r["text"] for r in batch])]
            width = max(map(len, ids))
            input_ids = np.zeros((len(ids), width), dtype=np.int64)
            mask = np.zeros((len(ids), width), dtype=np.int64)
            for i, row in enumerate(ids):
                input_ids[i, :len(row)], mask[i, :len(row)] = row, 1
            (vectors,) = session.run(["sentence_embedding"],
                                     {"input_ids": input_ids, "attention_mask": mask})
            for record, vector in zip(batch, vectors.tolist()):
                out.write(orjson.dumps({"custom_id": record["custom_id"], "embedding": vector})
                          + b"\n")
    return time.perf_counter() - start


def embeddings(path: Path) -> dict[str, np.ndarray]:
    found = {}
    for line in path.read_bytes().splitlines():
        row = orjson.loads(line)
        vector = row.get("embedding") or (row.get("output") or {}).get("embedding")
        found[row["custom_id"]] = np.asarray(vector, dtype=np.float64)
    return found


def lowest_cosine(expected: dict[str, np.ndarray], answered: dict[str, np.ndarray]) -> float:
    assert expected.keys() == answered.keys(), "Kiln's rows are not the input's rows"
    ids = list(expected)
    a = np.stack([expected[i] for i in ids])
    b = np.stack([answered[i] for i in ids])
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def kiln_round(kiln: KilnClient, source: Path, target: Path, pids: list[int]) -> dict:
    return bulk.kiln_round(kiln, source, target, pids, model="minilm", output_format="jsonl")


def registered_artifact(env: dict[str, str]) -> bytes:
    """The minilm file `kiln models add-demo` stored, so that both sides run the same bytes."""
    from sqlalchemy import select

    from app.cli.base import sessions
    from app.orm import Model
    from app.storage import Storage

    with sessions(support.settings_from_env(env))() as session:
        uri = session.scalars(select(Model.uri).where(Model.name == "minilm")).one()
    return Storage.read_bytes(uri)


def main(args) -> int:
    rows = args.rows or 4000
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bulk-text-"))
    name, env, key = start_kiln(tmp, args.chunk_rows, demo="minilm")
    artifact = registered_artifact(env)
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map["tokenizer.json"]
    tokenizer = Tokenizer.from_str(stored)
    del session
    source = tmp / "sentences.jsonl"
    write_sentences(source, rows, tokenizer)
    api, worker = support.start_api(env, tmp), support.start_worker(env, tmp)
    rounds = []
    try:
        kiln = KilnClient(api.url, key, timeout_seconds=600)
        for _ in range(args.rounds):
            raw = baseline(source, tmp / "baseline.jsonl", artifact, tokenizer)
            measured = kiln_round(kiln, source, tmp / "kiln.jsonl",
                                  [api.process.pid, worker.process.pid])
            cosine = lowest_cosine(embeddings(tmp / "baseline.jsonl"), embeddings(tmp / "kiln.jsonl"))
            rounds.append({"raw": raw, "cosine": cosine, **measured})
            print(f"round {len(rounds)}: raw {rows / raw:,.0f} rows/s, Kiln job "
                  f"{rows / measured['job']:,.0f} rows/s ({raw / measured['job']:.2f}x), end to end "
                  f"{raw / measured['e2e']:.2f}x, lowest cosine {cosine:.6f}, peak RSS "
                  f"{measured['rss'] / 2**20:,.0f} MiB (PSS {measured['pss'] / 2**20:,.0f} MiB)",
                  flush=True)
    finally:
        worker.stop()
        api.stop()
        support.drop_database(support.LOCAL_POSTGRES, name)
        shutil.rmtree(tmp, ignore_errors=True)
    job = [r["raw"] / r["job"] for r in rounds]
    print(f"\n{rows:,} sentences (4-120 words) on minilm, {len(rounds)} rounds: baseline "
          f"{min(rows / r['raw'] for r in rounds):,.0f}-{max(rows / r['raw'] for r in rounds):,.0f} "
          f"rows/s; Kiln job {min(job):.2f}-{max(job):.2f}x (median {statistics.median(job):.2f}x); "
          f"end to end {min(r['raw'] / r['e2e'] for r in rounds):.2f}-"
          f"{max(r['raw'] / r['e2e'] for r in rounds):.2f}x; lowest cosine "
          f"{min(r['cosine'] for r in rounds):.6f}; peak RSS "
          f"{max(r['rss'] for r in rounds) / 2**20:,.0f} MiB")
    return 0
