"""`kiln up` heals what it started: SIGKILL its embedded Redis, its embedded Postgres, its worker
and its API under a job load; each comes back, nothing accepted is lost, Ctrl-C leaves nothing.

One `kiln up` for the module (embedded servers under a fresh KILN_HOME); the tests run in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from app.upstate import read_up_state
from tests.support import free_port, kiln_command, run_kiln, wait_for
from tests.support import test_env as kiln_env
from workers.demo_models import digits_records, digits_split

pytestmark = pytest.mark.integration
RECORDS = 3
READY_AGAIN_SECONDS = 30  # generous for a loaded 2-core machine; measured values are printed


class Up:
    """A `kiln up` subprocess with its log file."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env, self.url = home, env, env["KILN_API_URL"]
        self.log = home / f"up-{uuid.uuid4().hex[:6]}.log"
        self.process = subprocess.Popen(kiln_command("up"), env=env, stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def readyz(self) -> int | None:
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code
        except httpx.HTTPError:
            return None

    def service(self, name: str):
        state = read_up_state(self.home)
        return next(s for s in state.services if s.name == name) if state else None


def up_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    return kiln_env({"KILN_HOME": str(home), "KILN_API_PORT": str(port),
                     "KILN_API_URL": f"http://127.0.0.1:{port}", "KILN_API_WORKERS": "1",
                     "KILN_WORKER_CONCURRENCY": "1", "KILN_LEASE_SECONDS": "4",
                     "KILN_RECONCILE_INTERVAL_SECONDS": "1", "KILN_QUEUED_GRACE_SECONDS": "2",
                     **extra})


def processes_of(home: Path) -> list[psutil.Process]:
    """Live processes started for this KILN_HOME (by environment or command line)."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        environ = process.info["environ"] or {}
        if environ.get("KILN_HOME") == str(home) or any(
                str(home) in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def up():
    home = Path(tempfile.mkdtemp(prefix="kiln-supervise-"))
    home.chmod(0o755)  # pgserver runs Postgres as an unprivileged user when the tests run as root
    stack = Up(home, up_env(home, free_port()))
    try:
        wait_for(lambda: (stack.process.poll() is None and stack.readyz() == 200)
                 or stack.process.poll() is not None, timeout=180, interval=0.3,
                 message="kiln up to be ready")
        assert stack.process.poll() is None, stack.text()
        key = run_kiln(stack.env, "keys", "create", "--tenant", "load").stdout.strip()
        stack.env["KILN_API_KEY"] = key.splitlines()[-1]
        yield stack
    finally:
        if stack.process.poll() is None:
            stack.process.send_signal(signal.SIGINT)
            try:
                stack.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                stack.process.kill()
        for process in processes_of(home):
            process.kill()
        shutil.rmtree(home, ignore_errors=True)


class Load:
    """Submits a small inline job every 0.2 s; remembers every job that got a 202."""

    def __init__(self, url: str, key: str):
        _, x_test, _, _ = digits_split()
        self.records = digits_records(x_test[:RECORDS])
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=5)
        self.accepted: list[str] = []
        self.unavailable: list[httpx.Response] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            self.submit_one()
            time.sleep(0.2)

    def submit_one(self) -> None:
        try:
            response = self.http.post("/v1/jobs", json={"model": "digits", "inputs": self.records})
        except httpx.HTTPError:
            return  # the API is down: nothing accepted
        if response.status_code == 202:
            self.accepted.append(response.json()["id"])
        elif response.status_code == 503:
            self.unavailable.append(response)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


def kill_and_time_readiness(up: Up, name: str) -> float:
    """SIGKILL one service; seconds until it runs again (a new pid) and /readyz is 200."""
    victim = up.service(name)
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()

    def back() -> bool:
        service = up.service(name)
        return (service is not None and service.state == "running" and service.pid != victim.pid
                and up.readyz() == 200)

    wait_for(back, timeout=120, interval=0.1, message=f"{name} to come back")
    return time.monotonic() - killed


def test_each_part_killed_comes_back_and_every_accepted_job_succeeds(up):
    measured = {}
    with Load(up.url, up.env["KILN_API_KEY"]) as load:
        time.sleep(2)
        for name in ("redis", "postgres", "worker", "api"):
            measured[name] = kill_and_time_readiness(up, name)
            time.sleep(2)  # jobs accepted after the restart, too
    print("seconds until /readyz is 200 again:", {k: round(v, 1) for k, v in measured.items()})
    assert all(seconds < READY_AGAIN_SECONDS for seconds in measured.values()), measured
    log = up.text()
    for name in measured:
        assert f"{name} restarted (pid" in log, log[-3000:]
        assert "died: signal SIGKILL" in log.split(f"{name} (pid", 1)[1].split("\n", 1)[0]
    assert load.unavailable, "no submit met the Postgres outage"
    assert all(r.headers.get("Retry-After") and r.headers["content-type"] ==
               "application/problem+json" for r in load.unavailable)
    assert len(load.accepted) > 20
    with httpx.Client(base_url=up.url, timeout=10,
                      headers={"Authorization": f"Bearer {up.env['KILN_API_KEY']}"}) as http:
        def all_finished() -> bool:
            return all(http.get(f"/v1/jobs/{job}").json()["status"] in ("succeeded", "failed")
                       for job in load.accepted)

        wait_for(all_finished, timeout=180, interval=1, message="the accepted jobs to finish")
        for job in load.accepted:
            assert http.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", job
            rows = [orjson.loads(line) for line in
                    http.get(f"/v1/jobs/{job}/results").content.splitlines()]
            assert sorted(row["index"] for row in rows) == list(range(RECORDS)), (job, rows)


def test_kiln_status_lists_the_services_of_the_running_up(up):
    result = run_kiln(up.env, "status")
    for name in ("postgres", "redis", "worker", "api"):
        line = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert " running " in line and str(up.service(name).pid) in line, result.stdout
    assert up.url in result.stdout and "unix://" in result.stdout
    assert "/readyz: 200" in result.stdout
    elsewhere = run_kiln({**up.env, "KILN_HOME": str(up.home / "nothing-here")}, "status",
                         check=False)
    assert elsewhere.returncode != 0 and "no `kiln up` is running" in elsewhere.stderr


def test_a_service_that_dies_at_once_is_given_up_on(up):
    """A second `kiln up` on the first one's servers, whose API port is taken."""
    home = up.home / "second"
    home.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        services = orjson.loads((up.home / "services.json").read_bytes())
        env = up_env(home, port, KILN_DATABASE_URL=services["database_url"],
                     KILN_REDIS_URL=services["redis_url"])
        second = Up(home, env)
        try:
            code = second.process.wait(timeout=150)
        finally:
            if second.process.poll() is None:
                second.process.kill()
    log = second.text()
    assert code == 1, log[-3000:]
    assert "api keeps dying within 10 s of starting (5 times in a row, last: exit code" in log
    assert log.count("api (pid") == 4 and "restarting it in 4 s" in log
    assert "Traceback" not in log.split("giving up", 1)[1]
    assert processes_of(home) == []
    assert up.readyz() == 200  # the first one's servers were not touched


def test_ctrl_c_stops_everything_and_leaves_no_process(up):
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=90) == 0
    time.sleep(0.5)
    assert processes_of(up.home) == []
    shutdown = up.text().rsplit("stopping …", 1)[1]
    assert "Traceback" not in shutdown and "pg_ctl" not in shutdown, shutdown
    assert not (up.home / "up.json").exists() and not (up.home / "services.json").exists()
