"""`kiln up` on a fresh KILN_HOME: embedded Postgres and Redis, API, worker; Ctrl-C stops it all."""

import re
import signal
import subprocess

import httpx
import orjson
import psutil

from tests.support import free_port, kiln_command, run_kiln, wait_for
from tests.support import test_env as kiln_env
from workers.demo_models import digits_records, digits_split


def start_up(env):
    process = subprocess.Popen(kiln_command("up"), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    url = env["KILN_API_URL"]

    def ready():
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode(errors="replace"))
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=120, interval=0.3, message="kiln up to be ready")
    return process


def lingering(pids: list[int], timeout: float = 15.0) -> list[str]:
    """The processes of `pids` still alive (not zombies) after `timeout`: a server's last
    backends may take a moment past their parent's exit on a loaded machine, which is not
    being left behind."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    left = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def stop_up(process) -> list[int]:
    tree = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert process.returncode == 0, output
    process.output = output
    return tree


def test_kiln_up_runs_everything_embedded_and_reuses_its_data(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    env = kiln_env({"KILN_HOME": str(home), "KILN_API_PORT": str(port),
                    "KILN_API_URL": f"http://127.0.0.1:{port}", "KILN_WORKER_CONCURRENCY": "1"})
    up = start_up(env)
    try:
        services = orjson.loads((home / "services.json").read_bytes())
        assert services["database_url"].startswith("postgresql://") and "host=" in services["database_url"]
        assert services["redis_url"].startswith("unix://")
        env["KILN_API_KEY"] = run_kiln(env, "keys", "create", "--tenant", "me").stdout.strip().splitlines()[-1]
        records = tmp_path / "r.jsonl"
        _, x_test, _, _ = digits_split()
        records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in digits_records(x_test[:10])))
        job = orjson.loads(run_kiln(env, "submit", "--model", "digits", "--input", str(records),
                                    "--wait").stdout)
        assert job["status"] == "succeeded"
    finally:
        children = stop_up(up)
    # Kiln's own lines, readable; without -v none of Celery's banner or per-task lines
    assert "Kiln is up." in up.output and "scored" in up.output
    assert not re.search(r"Task kiln\.\w+\[[^\]]+\] (received|succeeded)", up.output), up.output
    assert "[tasks]" not in up.output and not up.output.lstrip().startswith("{")
    left = lingering(children)
    assert not left, f"kiln up left processes behind: {left}"
    assert not (home / "services.json").exists()

    up = start_up(env)  # the same home: the same database, the job is still there
    try:
        again = orjson.loads(run_kiln(env, "status", job["id"]).stdout)
        assert again["status"] == "succeeded" and again["id"] == job["id"]
    finally:
        stop_up(up)
