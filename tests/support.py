"""Test plumbing: real Postgres and Redis (local or embedded), real `kiln` processes."""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
import psutil
import psycopg
import redis

from app.settings import Settings

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379"


def local_postgres_up() -> bool:
    try:
        psycopg.connect(LOCAL_POSTGRES, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


def local_redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_db() -> int:
    """The local Redis database (1-15) for this test process. KILN_TEST_REDIS_DB picks the run's
    (set it for runs side by side); unset, one is drawn per run. xdist's workers (gw0, gw1, ...)
    take the next ones, so no two workers share a database (queues and pub/sub stay apart)."""
    chosen = os.environ.get("KILN_TEST_REDIS_DB")
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of one run
    base = int(chosen) if chosen else (int(run, 16) if run else random.getrandbits(32)) % 15 + 1
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return (base - 1 + worker) % 15 + 1


def with_database(admin_url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """An empty database, or a copy of `template` (faster than migrating one)."""
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@functools.cache
def digits_model():
    """The built-in `digits` model, trained and exported once per test process."""
    from workers.demo_models import build_digits

    return build_digits()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kiln_command(*args: str, module: str = "workers.cli") -> list[str]:
    """`kiln ARGS` as a subprocess; `module` runs it through a wrapper such as tests.slowdisk."""
    return [sys.executable, "-m", module, *args]


def run_kiln(env: dict[str, str], *args: str, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(kiln_command(*args), env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@dataclass
class KilnProcess:
    """A `kiln api` or `kiln worker` subprocess with its log file."""

    name: str
    process: subprocess.Popen
    log: Path
    url: str | None = None
    extra: dict = field(default_factory=dict)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for child in self.children():
                    child.kill()
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_process(name: str, env: dict[str, str], logdir: Path, *args: str,
                  module: str = "workers.cli") -> KilnProcess:
    log = logdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    handle = log.open("wb")
    process = subprocess.Popen(kiln_command(*args, module=module), env=env, stdout=handle,
                               stderr=subprocess.STDOUT)
    return KilnProcess(name, process, log)


def start_api(env: dict[str, str], logdir: Path, timeout: float = 60,
              port: int | None = None) -> KilnProcess:
    return await_api(spawn_api(env, logdir, port), timeout)


def spawn_api(env: dict[str, str], logdir: Path, port: int | None = None) -> KilnProcess:
    port = port or free_port()
    api = start_process("api", env, logdir, "api", "--port", str(port))
    api.url = f"http://127.0.0.1:{port}"
    return api


def await_api(api: KilnProcess, timeout: float = 60) -> KilnProcess:
    """Healthy within `timeout` (a loaded 2-core machine takes tens of seconds to start one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            raise AssertionError(f"kiln api exited:\n{api.tail()}")
        try:
            if httpx.get(api.url + "/healthz", timeout=1).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    api.stop()
    raise AssertionError(f"kiln api did not become healthy:\n{api.tail()}")


def start_worker(env: dict[str, str], logdir: Path, *args: str, timeout: float = 60,
                 module: str = "workers.cli") -> KilnProcess:
    return await_worker(start_process("worker", env, logdir, "worker", *args, module=module),
                        timeout)


def start_api_and_worker(env: dict[str, str], logdir: Path, *worker_args: str,
                         worker_env: dict[str, str] | None = None, module: str = "workers.cli",
                         timeout: float = 60) -> tuple[KilnProcess, KilnProcess]:
    """Both processes started at once (each takes seconds to be ready); both stopped if either
    does not become ready. `module` runs the worker through a wrapper such as tests.slowdisk."""
    api = spawn_api(env, logdir)
    worker = start_process("worker", {**env, **(worker_env or {})}, logdir, "worker", *worker_args,
                           module=module)
    try:
        return await_api(api, timeout), await_worker(worker, timeout)
    except BaseException:
        worker.stop()
        api.stop()
        raise


def await_worker(worker: KilnProcess, timeout: float = 60) -> KilnProcess:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AssertionError(f"kiln worker exited:\n{worker.tail()}")
        if b" ready." in worker.log.read_bytes():
            return worker
        time.sleep(0.2)
    worker.stop()
    raise AssertionError(f"kiln worker did not become ready:\n{worker.tail()}")


def wait_for(predicate, timeout: float = 60, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def test_env(base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    # the tests read text lines from logs written to files (unset, a file gets JSON)
    env["KILN_LOG_FORMAT"] = "text"
    env.update(base)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def settings_from_env(env: dict[str, str]) -> Settings:
    """The settings a kiln process started with `env` builds: nested names such as
    `KILN_TUNING__CHUNK_ROWS` and the deprecated flat ones alike."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()
