"""Serve the API under granian (WSGI, a thread pool per worker process) from code, for
`kiln api` and `kiln up`.

granian parses HTTP in Rust: about 0.19 ms of CPU per request against 0.49 ms for gunicorn's
gthread workers on the same Flask app (docs/benchmarks.md), and that is CPU the workers and
Postgres get back on a shared machine. Request and response bodies are streamed both ways, so
large uploads and result downloads do not sit in memory.
"""

from __future__ import annotations

import copy
from typing import Any

from app.settings import Settings

# On SIGTERM the server stops accepting connections and gives in-flight requests this long
# before it kills its workers (the Kubernetes grace period covers it, see deploy/k8s).
GRACEFUL_TIMEOUT_SECONDS = 20
# Longer than the idle timeout of the proxies and clients in front (60 s on AWS ALB), so the
# server is never the side that closes a keep-alive connection a client is about to reuse.
# In granian (hyper) the header read timeout is also the idle keep-alive timeout.
KEEPALIVE_SECONDS = 75


class ApiServer:
    def __init__(self, settings: Settings, host: str, port: int):
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LOGGING_CONFIG, LogLevels

        from app.logs import resolved_format

        self.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
        self.options: dict[str, Any] = {
            # each worker process builds the app from the environment, as `kiln api` does
            "target": "app.api:create_app", "factory": True, "interface": Interfaces.WSGI,
            "address": host, "port": port, "workers": settings.effective_api_workers,
            "blocking_threads": settings.api_threads, "backlog": 2048,
            "http1_settings": HTTP1Settings(header_read_timeout=KEEPALIVE_SECONDS * 1000),
            "workers_kill_timeout": GRACEFUL_TIMEOUT_SECONDS, "respawn_failed_workers": True,
            "respawn_interval": 1.0, "log_access": False,
            "log_level": LogLevels(settings.log_level.lower()),
            "log_dictconfig": logging_config(LOGGING_CONFIG, settings.log_level,
                                             resolved_format(settings.log_format)),
        }

    def run(self) -> None:
        from granian.server import Server

        Server(**self.options).serve()


def logging_config(granian_config: dict[str, Any], level: str,
                   fmt: str = "text") -> dict[str, Any]:
    """granian's own logging configuration, plus Kiln's loggers (through the root logger) at
    KILN_LOG_LEVEL in the format `kiln worker` uses; with KILN_LOG_FORMAT=json granian's own
    lines are JSON too."""
    from app.logs import formatter_config

    config = copy.deepcopy(granian_config)
    if fmt == "json":
        config["formatters"] = {name: formatter_config(fmt) for name in config["formatters"]}
    config["formatters"]["kiln"] = formatter_config(fmt)
    config["handlers"]["kiln"] = {"formatter": "kiln", "class": "logging.StreamHandler",
                                  "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["kiln"], "level": level.upper()}
    return config
