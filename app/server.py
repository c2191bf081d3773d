"""Serve the API under gunicorn (gthread workers) from code, for `kiln api` and `kiln up`."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from app.settings import Settings


class ApiServer(BaseApplication):
    def __init__(self, settings: Settings, host: str, port: int):
        self.settings = settings
        self.options = {"bind": f"{host}:{port}", "workers": settings.effective_api_workers,
                        "threads": settings.api_threads, "worker_class": "gthread",
                        "timeout": 60, "graceful_timeout": 20, "accesslog": None,
                        # longer than the idle timeout of the proxies and clients in front
                        # (60 s on AWS ALB), so the server is never the side that closes a
                        # connection a client is about to reuse
                        "keepalive": 75,
                        "loglevel": settings.log_level.lower()}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from app.api import create_app

        return create_app(self.settings)
