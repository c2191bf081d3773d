"""`kiln up`'s supervisor: it restarts what it started (the embedded Postgres and Redis, the API,
the worker) when one dies, with backoff, and gives up on one that keeps dying at once.

A supervised thing is anything with `name`, `url`, `pid`, `start()`, `exit_status()` and
`stop()`: a child process (`ChildProcess`) or an embedded server (`EmbeddedServer`). The others
ride out a restart on their own: they reconnect to a server that comes back on the same socket.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from app.embedded import EmbeddedPostgres, EmbeddedRedis, describe_exit
from app.errors import KilnError
from app.upstate import ServiceState, UpState, up_record, write_up_state

PR_SET_CHILD_SUBREAPER = 36


class GaveUp(KilnError):
    """Raised when a supervised service keeps dying within seconds of each start."""

    code = "gave_up"
    title = "A service keeps dying"


class Supervised(Protocol):
    name: str

    @property
    def url(self) -> str | None: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def exit_status(self) -> str | None:
        """None while it runs; how it ended (`exit code 1`, `signal SIGKILL`) once it has."""

    def stop(self) -> None: ...


class ChildProcess:
    """A `kiln api` or `kiln worker` in a process group of its own, so that its own children
    (granian's workers, Celery's prefork pool) go with it when it dies."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], url: str | None = None,
                 stop_timeout_seconds: float = 30.0):
        self.name, self.args, self.env, self.url = name, args, env, url
        self.stop_timeout_seconds = stop_timeout_seconds
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "workers.cli", *self.args],
                                        env=self.env, start_new_session=True)

    def exit_status(self) -> str | None:
        if self.process is None or self.process.poll() is None:
            return None
        self.kill_group()  # orphans would keep the port or the queue's prefetched tasks
        return describe_exit(self.process.returncode)

    def kill_group(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self) -> None:
        """SIGTERM (a graceful stop: in-flight requests and tasks finish), then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.process.wait()
        self.kill_group()


class EmbeddedServer:
    """The embedded Postgres or Redis, started again on the same data folder and socket."""

    def __init__(self, name: str, server: EmbeddedPostgres | EmbeddedRedis):
        self.name, self.server = name, server
        self.url: str | None = None

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def start(self) -> None:
        self.url = self.server.start()

    def exit_status(self) -> str | None:
        return self.server.exit_status()

    def stop(self) -> None:
        self.server.stop()


@dataclass(frozen=True)
class RestartPolicy:
    """The first restart is at once, the next ones wait longer (doubling, capped). A run shorter
    than `stable_seconds` is a quick death; `give_up_after` quick deaths in a row end `kiln up`."""

    stable_seconds: float = 10.0
    give_up_after: int = 5
    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0

    def delay_seconds(self, deaths_in_a_row: int) -> float:
        if deaths_in_a_row <= 1:
            return 0.0
        return min(self.max_delay_seconds, self.first_delay_seconds * 2 ** (deaths_in_a_row - 2))


@dataclass
class Service:
    """A supervised thing and what the supervisor knows of it."""

    thing: Supervised
    state: ServiceState
    started: float = 0.0  # monotonic
    deaths_in_a_row: int = 0
    restart_at: float | None = None  # monotonic


@dataclass
class Supervisor:
    home: Path
    api_url: str
    say: Callable[[str], None]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    services: list[Service] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started_at = time.time()

    @property
    def embedded(self) -> bool:
        return any(isinstance(service.thing, EmbeddedServer) for service in self.services)

    def start(self, thing: Supervised) -> None:
        """Start a thing for the first time; a failure here is not retried."""
        service = Service(thing, ServiceState(thing.name, "starting"))
        self.services.append(service)
        self._start(service)

    def _start(self, service: Service) -> None:
        service.thing.start()
        service.started, service.restart_at = time.monotonic(), None
        service.state.state, service.state.pid = "running", service.thing.pid
        service.state.started_at, service.state.url = time.time(), service.thing.url
        self.record()

    def record(self) -> None:
        write_up_state(self.home, UpState(os.getpid(), self.api_url, self.started_at,
                                          [service.state for service in self.services]))

    def run(self, until: Callable[[], bool], interval_seconds: float = 0.2) -> None:
        """Watch and restart until `until()` is true; raises GaveUp."""
        while not until():
            self.check()
            time.sleep(interval_seconds)

    def check(self) -> None:
        reap_orphans({service.thing.pid for service in self.services})
        now = time.monotonic()
        for service in self.services:
            if service.state.state == "running":
                ended = service.thing.exit_status()
                if ended is not None:
                    self._died(service, ended, now)
            elif service.restart_at is not None and now >= service.restart_at:
                self._restart(service)

    def _died(self, service: Service, ended: str, now: float) -> None:
        ran = now - service.started
        quick = ran < self.policy.stable_seconds
        service.deaths_in_a_row = service.deaths_in_a_row + 1 if quick else 1
        state, name = service.state, service.thing.name
        state.last_exit, state.state, state.started_at = ended, "restarting", None
        if quick and service.deaths_in_a_row >= self.policy.give_up_after:
            state.state = "given up"
            self.record()
            raise GaveUp(f"{name} keeps dying within {self.policy.stable_seconds:g} s of "
                         f"starting ({service.deaths_in_a_row} times in a row, last: {ended}); "
                         f"giving up on it and stopping kiln up")
        delay = self.policy.delay_seconds(service.deaths_in_a_row)
        service.restart_at = now + delay
        when = "now" if delay == 0 else f"in {delay:g} s"
        self.say(f"{name} (pid {state.pid}) died: {ended} after {ran:.1f} s; "
                 f"restarting it {when}")
        self.record()

    def _restart(self, service: Service) -> None:
        name = service.thing.name
        try:
            self._start(service)
        except Exception as exc:  # noqa: BLE001 - a failed start is one more quick death
            self._died(service, f"failed to start ({exc.__class__.__name__}: {exc})",
                       time.monotonic())
            return
        service.state.restarts += 1
        self.say(f"{name} restarted (pid {service.state.pid}, restart "
                 f"{service.state.restarts})")
        self.record()

    def stop_all(self) -> None:
        """Stop in the reverse order of starting: the API and the worker before the servers."""
        for service in reversed(self.services):
            service.thing.stop()
            service.state.state, service.state.pid = "stopped", None
        reap_orphans(set())
        up_record(self.home).unlink(missing_ok=True)


def become_subreaper() -> None:
    """Adopt orphaned descendants (the postmaster that pg_ctl detaches, the children of a killed
    worker) so that their exit statuses come to `kiln up` and they leave no zombies (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def reap_orphans(exclude: set[int | None]) -> None:
    """Collect dead adopted processes that nobody else waits for."""
    for child in psutil.Process().children():
        if child.pid in exclude:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
