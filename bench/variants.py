"""Optimised variants against fp32, measured in one run: rows/s and accuracy deltas.

    python -m bench.variants [--threads 2] [--skip-minilm]

digits: the held-out split (labels known), a 1,024-row batch for timing.
minilm: 256 generated sentences (8–40 words) for timing and cosine similarity against fp32.
Both on ONNX Runtime's CPU provider (no GPU on this machine; fp16 is meant for CUDA).
"""

from __future__ import annotations

import argparse
import random
import sys

from workers.demo_models import build_digits
from workers.optimize import (TIMING_ROWS, Sample, default_sample, float16, graph_optimized,
                              measure_variant, quantized_int8)

BUILD = {"graph": graph_optimized, "int8": quantized_int8, "fp16": float16}
WORDS = ("the model scores every row of the file in large batches while the queue keeps "
         "each job safe in postgres and workers on many machines share the load fairly").split()


def sentences(n: int = 256, seed: int = 0) -> Sample:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(n)]
    return Sample([{"text": t} for t in texts], None, f"{n} generated sentences")


def rows(model, sample: Sample, threads: int) -> list[str]:
    lines = []
    for variant, build in BUILD.items():
        built, _ = build(model.artifact)
        m = measure_variant(model.artifact, built, model.signature, model.processing, sample,
                            threads, ["CPUExecutionProvider"])
        timed_rows = TIMING_ROWS if "label_agreement" in m else len(sample.records)
        fp32_rate = timed_rows / m["batch_seconds_fp32"]
        rate = timed_rows / m["batch_seconds"]
        quality = (f"label agreement {m['label_agreement']}, accuracy {m.get('accuracy_fp32')} → "
                   f"{m.get('accuracy')} (Δ {m.get('accuracy_delta')})"
                   if "label_agreement" in m else
                   f"cosine vs fp32 mean {m['cosine_mean']}, min {m['cosine_min']}")
        lines.append(f"| {model.name} | {variant} | {fp32_rate:,.0f} | {rate:,.0f} | "
                     f"{m['speedup']:.2f}x | {quality} | {m['bytes_fp32'] / 1e6:.2f} → "
                     f"{m['bytes'] / 1e6:.2f} MB |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    lines = ["| model | variant | fp32 rows/s | variant rows/s | ratio | accuracy | size |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    digits = build_digits()
    lines += rows(digits, default_sample(digits.signature), args.threads)
    if not args.skip_minilm:
        from workers.demo_models import build_minilm
        lines += rows(build_minilm(), sentences(), args.threads)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
