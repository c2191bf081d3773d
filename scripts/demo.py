"""`make demo`: start Kiln embedded, score held-out digits as a client would, print, stop.

Everything goes through the `kiln` command line, exactly as a user would type it. Kiln's own
progress lines show; `-v` (`make demo V=1`) adds the worker's chatter (`kiln up -v`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from workers.demo_models import digits_records, digits_split

ROOT = Path(__file__).resolve().parent.parent
KILN = [sys.executable, "-m", "workers.cli"]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pick_port(preferred: int) -> int:
    if port_is_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kiln(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*KILN, *args], env=env, check=True, stdout=subprocess.PIPE,
                          text=True).stdout


def bulk_scoring(env: dict[str, str], rows: int = 3000) -> bool:
    """Journey 2: a CSV with an id column, uploaded, scored, downloaded and checked."""
    import csv

    import numpy as np

    x_train, x_test, y_train, y_test = digits_split()
    features = np.resize(np.concatenate([x_test, x_train]), (rows, 64))  # 1,797 images, repeated
    truth = np.resize(np.concatenate([y_test, y_train]), rows)
    with tempfile.TemporaryDirectory() as tmp:
        source, scored = Path(tmp) / "digits.csv", Path(tmp) / "scored.csv"
        with source.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_id", *[f"p{i}" for i in range(64)]])
            for i, row in enumerate(features):
                writer.writerow([f"img-{i:05d}", *[int(v) for v in row]])
        print(f"\n$ kiln upload {source.name} --model digits --id-column image_id --wait "
              f"-o {scored.name}", flush=True)
        job = orjson.loads(kiln(env, "upload", str(source), "--model", "digits", "--id-column",
                                "image_id", "--wait", "-o", str(scored)))
        with scored.open() as handle:
            results = list(csv.DictReader(handle))
    expected = {f"img-{i:05d}": int(t) for i, t in enumerate(truth)}
    correct = sum(int(r["label"]) == expected[r["image_id"]] for r in results)
    print(f"bulk job {job['id']}: {job['status']}, {job['request_counts']}, "
          f"{job.get('rows_per_second') or 0:,.0f} rows/s")
    print(f"first rows of {scored.name}: " + ", ".join(
        f"{r['image_id']}→{r['label']}" for r in results[:5]))
    print(f"bulk accuracy {correct}/{len(results)} = {correct / max(len(results), 1):.3f}")
    return job["status"] == "succeeded" and len(results) == rows and correct >= 0.9 * rows


def webhook(env: dict[str, str]) -> bool:
    """Journey 3: a local receiver verifies the signed callback when a job ends."""
    headers = {"Authorization": f"Bearer {env['KILN_API_KEY']}"}
    print("\n$ curl -X POST $KILN_API_URL/v1/webhooks/job-secret/rotate   # the signing secret",
          flush=True)
    secret = httpx.post(f"{env['KILN_API_URL']}/v1/webhooks/job-secret/rotate",
                        headers=headers).json()["secret"]
    port = pick_port(8787)
    print(f"$ kiln webhooks listen --port {port} --secret whsec_…", flush=True)
    listener = subprocess.Popen([*KILN, "webhooks", "listen", "--port", str(port), "--secret",
                                 secret], env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        _, x_test, _, _ = digits_split()
        response = httpx.post(f"{env['KILN_API_URL']}/v1/jobs", headers=headers, json={
            "model": "digits", "inputs": digits_records(x_test[:3]),
            "webhook_url": f"http://127.0.0.1:{port}/"})
        print(f"submitted job {response.json()['id']} with webhook_url http://127.0.0.1:{port}/")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = listener.stdout.readline()
            if line.startswith("job."):
                print(f"receiver: {line.strip()}")
                return "signature ok" in line and line.startswith("job.succeeded")
        print("no webhook arrived in 30 s", file=sys.stderr)
        return False
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def dashboard_banner(env: dict[str, str]) -> str:
    """Where the dashboard is, and the key to paste on its sign-in page."""
    return (f"\nDashboard: {env['KILN_API_URL']}/ui/\n"
            f"Sign in with the API key: {env['KILN_API_KEY']}\n")


def main(argv: list[str]) -> int:
    verbose = bool({"-v", "--verbose"} & set(argv))
    port = pick_port(8000)
    env = {k: v for k, v in os.environ.items()
           if k not in ("KILN_DATABASE_URL", "KILN_REDIS_URL")}
    env.update({"KILN_HOME": str(ROOT / ".kiln"), "KILN_API_PORT": str(port),
                "KILN_API_URL": f"http://127.0.0.1:{port}", "KILN_WORKER_CONCURRENCY": "1"})
    up_args = ["up", *(["-v"] if verbose else [])]
    print(f"$ kiln {' '.join(up_args)}   (embedded Postgres + Redis under {env['KILN_HOME']})",
          flush=True)
    up = subprocess.Popen([*KILN, *up_args], env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if up.poll() is not None:
                print("kiln up exited early", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{env['KILN_API_URL']}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("Kiln did not become ready in time", file=sys.stderr)
                return 1
            time.sleep(0.5)

        print("$ kiln keys create --tenant demo", flush=True)
        env["KILN_API_KEY"] = kiln(env, "keys", "create", "--tenant", "demo").strip().splitlines()[-1]
        print(dashboard_banner(env), flush=True)

        _, x_test, _, y_test = digits_split()
        x_test, y_test = x_test[:25], y_test[:25]
        with tempfile.TemporaryDirectory() as tmp:
            records = Path(tmp) / "digits.jsonl"
            records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in digits_records(x_test)))
            print(f"$ kiln submit --model digits --input {records.name} --wait", flush=True)
            job = orjson.loads(kiln(env, "submit", "--model", "digits", "--input", str(records),
                                    "--wait"))
            print(f"$ kiln results {job['id']}", flush=True)
            lines = [orjson.loads(line) for line in kiln(env, "results", job["id"]).splitlines()]

        print(f"\njob {job['id']}: {job['status']}, {job['request_counts']}")
        print(f"{'row':>4}  {'true':>4}  {'predicted':>9}  {'confidence':>10}")
        correct = 0
        for line, truth in zip(lines, y_test):
            output = line["output"]
            correct += output["label"] == int(truth)
            mark = "" if output["label"] == int(truth) else "  <- wrong"
            print(f"{line['index']:>4}  {int(truth):>4}  {output['label']:>9}  "
                  f"{max(output['probabilities']):>10.3f}{mark}")
        print(f"\naccuracy {correct}/{len(lines)}")
        journey_one = job["status"] == "succeeded" and correct >= 0.9 * len(lines)
        passed = journey_one and bulk_scoring(env) and webhook(env)
        print(dashboard_banner(env), flush=True)
        if sys.stdin.isatty():  # a person is watching: keep Kiln up for the dashboard
            input("Press Enter to stop Kiln … ")
        return 0 if passed else 1
    finally:
        print("stopping Kiln …", flush=True)
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
