"""The GPU worker path, measured on a machine with CUDA: the runtime a GPU worker builds
(`load_model(..., require_gpu=True)`, after `check_cuda_active`), rows/s by model-call batch
size on ONNX Runtime's CUDA provider against its CPU provider on the same machine, fp32 and the
fp16 variant (`kiln models optimize --variant fp16`), and agreement with fp32 on the CPU.

    python -m bench.gpu --export DIR    # where Kiln is installed: the demo models, their fp16
                                        # variants and reference outputs, written to DIR
    python -m bench.gpu DIR             # on the GPU machine: needs onnxruntime-gpu, numpy,
                                        # tokenizers and onnx only (not Kiln's services)

The second step imports nothing of Kiln but `workers.runtime.onnx`, so it runs where only the
inference stack is installed. Each figure is the median of `--repeat` timed calls after a warm-up
call; the CPU provider uses every core of the machine (`--cpu-threads`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

WORDS = ("the model scores every row of the file in large batches while the queue keeps each "
         "job safe in postgres and workers on many machines share the load fairly").split()
DIGITS_BATCHES = (256, 1024, 4096, 16384, 65536)
TEXT_BATCHES = (32, 128, 256, 512)
TEXT_ROWS = 2048


def sentences(n: int, seed: int = 0) -> list[str]:
    """4-120 words each: the spread issue 20 asks the text benchmark to use."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 120))) for _ in range(n)]


# ---------------------------------------------------------------- --export (here)

def export(folder: Path) -> None:
    from workers import demo_cache
    from workers.demo_models import build_digits, build_minilm, digits_split
    from workers.optimize import float16
    from workers.runtime.onnx import CPU_PROVIDER, load_model

    folder.mkdir(parents=True, exist_ok=True)
    for name, build in (("digits", build_digits), ("minilm", build_minilm)):
        model, _ = demo_cache.built(name, build)
        fp16, _ = float16(model.artifact)
        (folder / f"{name}-fp16.onnx").write_bytes(fp16)
        (folder / f"{name}.json").write_text(json.dumps(
            {"signature": model.signature, "processing": model.processing}))
        if name == "digits":  # small: its fp32 travels too
            (folder / f"{name}-fp32.onnx").write_bytes(model.artifact)
            np.save(folder / "digits-x.npy", np.concatenate(digits_split()[:2]))
        else:  # 90 MB: reference embeddings (fp32, CPU) travel instead
            runtime = load_model(model.artifact, model.signature, model.processing, threads=2)
            assert runtime.providers == [CPU_PROVIDER]
            started = time.perf_counter()
            rows = runtime.run([{"text": t} for t in sentences(TEXT_ROWS)])
            seconds = time.perf_counter() - started
            np.save(folder / "minilm-reference.npy",
                    np.array([r["embedding"] for r in rows], dtype=np.float32))
            (folder / "minilm-cpu-here.json").write_text(json.dumps(
                {"rows_per_second": TEXT_ROWS / seconds, "threads": 2}))
    print(f"exported to {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))


# ---------------------------------------------------------------- measuring (there)

def median_seconds(call, argument, repeat: int) -> float:
    """The median time of `call(argument)` over `repeat` calls after a warm-up call."""
    call(argument)  # warm-up: CUDA kernels chosen, memory arena grown
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call(argument)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def digits_table(folder: Path, cpu_threads: int, repeat: int) -> list[str]:
    from workers.runtime.onnx import CPU_PROVIDER, load_model, make_session, load_tabular_classifier

    meta = json.loads((folder / "digits.json").read_text())
    x = np.load(folder / "digits-x.npy").astype(np.float32)
    lines = ["| digits | batch rows | CUDA fp32 rows/s | CUDA fp16 rows/s | CPU fp32 rows/s "
             f"({cpu_threads} threads) | CUDA fp32 / CPU | labels = CPU fp32 (fp32, fp16) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    runtimes = {}
    for variant in ("fp32", "fp16"):
        artifact = (folder / f"digits-{variant}.onnx").read_bytes()
        runtimes[variant] = load_model(artifact, meta["signature"], meta["processing"],
                                       threads=1, require_gpu=True)
    cpu = load_tabular_classifier(
        make_session((folder / "digits-fp32.onnx").read_bytes(), cpu_threads, [CPU_PROVIDER]),
        meta["signature"], meta["processing"])
    print("digits providers:", {k: v.providers for k, v in runtimes.items()}, file=sys.stderr)
    for rows in DIGITS_BATCHES:
        batch = np.resize(x, (rows, x.shape[1]))
        want, _ = cpu.predict(batch)
        rates, agree = {}, []
        for variant, runtime in runtimes.items():
            rates[variant] = rows / median_seconds(runtime.predict, batch, repeat)
            agree.append(f"{float(np.mean(runtime.predict(batch)[0] == want)):.4f}")
        cpu_rate = rows / median_seconds(cpu.predict, batch, repeat)
        lines.append(f"| | {rows:,} | {rates['fp32']:,.0f} | {rates['fp16']:,.0f} | "
                     f"{cpu_rate:,.0f} | {rates['fp32'] / cpu_rate:.2f}x | {', '.join(agree)} |")
    return lines


def minilm_table(folder: Path, repeat: int) -> list[str]:
    """fp16 only: its fp32 (90 MB) stays behind. The CPU figure is fp32 on the machine that
    exported it (fp16 on a CPU provider is no worker's choice)."""
    from workers.runtime.onnx import GPU_TEXT_BATCH, load_model

    meta = json.loads((folder / "minilm.json").read_text())
    reference = np.load(folder / "minilm-reference.npy")[:TEXT_ROWS]
    here = json.loads((folder / "minilm-cpu-here.json").read_text())
    records = [{"text": t} for t in sentences(TEXT_ROWS)]
    artifact = (folder / "minilm-fp16.onnx").read_bytes()
    lines = [f"| minilm fp16 on CUDA, {TEXT_ROWS:,} sentences of 4-120 words | model-call batch "
             f"| rows/s | / fp32 on 2 CPU threads ({here['rows_per_second']:,.0f} rows/s) | "
             "cosine vs fp32 on the CPU (mean, min) |", "| --- | ---: | ---: | ---: | --- |"]
    for batch in TEXT_BATCHES:
        processing = {**meta["processing"], "gpu_batch_size": batch}
        runtime = load_model(artifact, meta["signature"], processing, threads=1, require_gpu=True)
        assert runtime.batch_size == batch, runtime.batch_size
        rate = TEXT_ROWS / median_seconds(runtime.run, records, repeat)
        got = np.array([r["embedding"] for r in runtime.run(records)], dtype=np.float32)
        cosine = (got * reference).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
        default = " (the worker's default)" if batch == GPU_TEXT_BATCH else ""
        lines.append(f"| | {batch}{default} | {rate:,.0f} | {rate / here['rows_per_second']:.1f}x | "
                     f"{cosine.mean():.6f}, {cosine.min():.6f} |")
    return lines


def measure(folder: Path, cpu_threads: int, repeat: int) -> int:
    import onnxruntime as ort

    from workers.runtime.onnx import GPU_PROVIDER, check_cuda_active

    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}",
          file=sys.stderr)
    try:
        check_cuda_active()
        print("check_cuda_active: ok without preloading", file=sys.stderr)
    except RuntimeError as exc:
        print(f"check_cuda_active without preloading: {exc}", file=sys.stderr)
        if GPU_PROVIDER not in ort.get_available_providers():
            return 1
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels
        check_cuda_active()
        print("check_cuda_active: ok after onnxruntime.preload_dlls()", file=sys.stderr)
    print("\n".join(digits_table(folder, cpu_threads, repeat)) + "\n", flush=True)
    print("\n".join(minilm_table(folder, repeat)) + "\n", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0 = every core")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    if args.export:
        export(args.folder)
        return 0
    import os

    return measure(args.folder, args.cpu_threads or os.cpu_count() or 1, args.repeat)


if __name__ == "__main__":
    sys.exit(main())
