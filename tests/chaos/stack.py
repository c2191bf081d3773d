"""A Kiln installation on its own embedded Postgres and Redis, and the faults the chaos test injects.

Nothing here touches the Postgres and Redis other tests use: both servers live under the test's
temporary folder, so stopping them harms nobody else.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.db import make_engine, make_sessionmaker
from app.embedded import EmbeddedPostgres, EmbeddedRedis
from app.migrate import upgrade
from app.services.auth import create_key
from tests import support

WORKERS = 2
WORKER_CONCURRENCY = "2"


@dataclass
class Outage:
    """A window (monotonic seconds) during which one service was down."""

    what: str
    down_at: float
    up_at: float | None = None


class ChaosStack:
    """Postgres, Redis, one `kiln api` and two `kiln worker -c 2`, all of which may be broken."""

    def __init__(self, home: Path, **overrides: str):
        self.home = home
        self.logdir = home / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.postgres = EmbeddedPostgres(home)
        self.redis = EmbeddedRedis(home)
        self.overrides = overrides
        self.api: support.KilnProcess | None = None
        self.workers: list[support.KilnProcess] = []
        self.retired: list[support.KilnProcess] = []
        self.orphans: list[psutil.Process] = []
        self.kills: Counter[str] = Counter()
        self.busy_kills = 0
        self.killed_parents: set[int] = set()
        self.logs_at_redis_restart: list[tuple[support.KilnProcess, int]] = []
        self.outages: list[Outage] = []
        self.timeline: list[tuple[float, str]] = []
        self.t0 = time.monotonic()

    # ------------------------------------------------------------ start and stop

    def start(self) -> ChaosStack:
        admin_url = self.postgres.start()
        redis_url = self.redis.start()
        database_url = support.create_database(admin_url, "kiln_chaos")
        self.env = support.test_env({
            "KILN_DATABASE_URL": database_url, "KILN_REDIS_URL": redis_url,
            "KILN_HOME": str(self.home), "KILN_QUEUE": "chaos", **self.overrides})
        self.settings = support.settings_from_env(self.env)
        self.engine = make_engine(self.settings, pool_size=2)
        self.sessions = make_sessionmaker(self.engine)
        upgrade(self.settings)
        support.run_kiln(self.env, "models", "add-demo", "digits")
        self.api_port = support.free_port()
        with ThreadPoolExecutor(1 + WORKERS) as pool:
            api = pool.submit(support.start_api, self.env, self.logdir, port=self.api_port)
            workers = [pool.submit(self._start_worker) for _ in range(WORKERS)]
            self.api = api.result()
            self.workers = [w.result() for w in workers]
        return self

    def _start_worker(self) -> support.KilnProcess:
        return support.start_worker(self.env, self.logdir, "-c", WORKER_CONCURRENCY)

    def create_key(self, tenant: str) -> str:
        with self.sessions.begin() as session:
            return create_key(session, tenant)[1]

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            process.stop(timeout=10)
        for process in self.retired:
            if process.process.poll() is None:
                process.process.kill()
        for orphan in self.orphans:
            try:
                orphan.kill()
            except psutil.NoSuchProcess:
                pass
        if hasattr(self, "engine"):
            self.engine.dispose()
        self.redis.stop()
        self.postgres.stop()

    # ------------------------------------------------------------ faults

    def note(self, text: str) -> None:
        self.timeline.append((time.monotonic() - self.t0, text))

    def exited_on_their_own(self) -> list[int]:
        """Worker parents that died although nobody killed them."""
        return [w.process.pid for w in [*self.workers, *self.retired]
                if w.name == "worker" and w.process.poll() is not None
                and w.process.pid not in self.killed_parents]

    def orphans_left(self) -> list[int]:
        """Children of killed worker parents that are still running."""
        return [orphan.pid for orphan in self.orphans if _alive(orphan)]

    def live_workers(self) -> list[support.KilnProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    def kill_worker_child(self) -> bool:
        """SIGKILL the busiest prefork child (the one that used the most CPU in the last 0.3 s),
        as the OOM killer would. Returns whether it was busy; Celery forks a replacement."""
        children = [child for worker in self.live_workers() for child in worker.children()
                    if _alive(child)]
        before = {child.pid: _cpu(child) for child in children}
        time.sleep(0.3)
        used = sorted(((_cpu(child) - before[child.pid], child.pid, child) for child in children),
                      key=lambda item: item[:2], reverse=True)
        if not used:
            self.note("no worker child to kill")
            return False
        delta, pid, victim = used[0]
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return False
        self.kills["worker child"] += 1
        self.busy_kills += delta > 0
        self.note(f"SIGKILL worker child {pid} ({'busy' if delta > 0 else 'idle'})")
        return delta > 0

    def kill_worker_parent(self, index: int) -> None:
        """SIGKILL a worker's parent process (its children are orphaned and find out by
        themselves), then start a replacement worker, as a supervisor would."""
        worker = self.workers[index]
        if worker.process.poll() is not None:  # counted by exited_on_their_own()
            self.note(f"worker {worker.process.pid} had already exited ({worker.process.returncode})")
        else:
            orphans = [child for child in worker.children() if _alive(child)]
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait()
            self.kills["worker parent"] += 1
            self.killed_parents.add(worker.process.pid)
            self.orphans += orphans
            self.note(f"SIGKILL worker parent {worker.process.pid} "
                      f"({len(orphans)} children orphaned)")
        self.retired.append(worker)
        self.workers[index] = self._start_worker()
        self.note(f"replacement worker {self.workers[index].process.pid} ready")

    def kill_api(self) -> None:
        """SIGKILL the API (granian's main process and its workers) and start it again on its port."""
        assert self.api is not None
        outage = Outage("api", time.monotonic())
        processes = [psutil.Process(self.api.process.pid), *self.api.children()]
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        self.kills["api"] += 1
        self.note(f"SIGKILL api ({len(processes)} processes)")
        self.retired.append(self.api)
        self.api = support.start_api(self.env, self.logdir, port=self.api_port)
        outage.up_at = time.monotonic()
        self.outages.append(outage)
        self.note("api restarted")

    def restart_redis(self, down_seconds: float) -> None:
        outage = Outage("redis", time.monotonic())
        self.outages.append(outage)
        self.logs_at_redis_restart = [(w, w.log.stat().st_size) for w in self.live_workers()]
        self.redis.stop()
        self.note("redis stopped")
        time.sleep(down_seconds)
        self.note("redis starting")
        self.redis.start()
        outage.up_at = time.monotonic()
        self.note("redis started")

    def restart_postgres(self, down_seconds: float) -> None:
        outage = Outage("postgres", time.monotonic())
        self.outages.append(outage)
        self.postgres.stop()
        self.note("postgres stopped (pg_ctl -m fast)")
        time.sleep(down_seconds)
        self.note("postgres starting")
        self.postgres.start()
        outage.up_at = time.monotonic()
        self.note("postgres started")

    def took_tasks_since_redis_restart(self) -> list[int]:
        """Workers (alive when Redis went down) that received a task after it came back."""
        return [w.process.pid for w, offset in self.logs_at_redis_restart
                if b"] received" in w.log.read_bytes()[offset:]]

    def outage(self, what: str) -> Outage | None:
        return next((o for o in self.outages if o.what == what), None)


def _alive(process: psutil.Process) -> bool:
    """Running, not a zombie: a child killed a moment ago stays listed until Celery reaps it."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.NoSuchProcess:
        return -1.0
