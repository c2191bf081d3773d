"""Kiln's log lines: plain text, or one JSON object per line (`KILN_LOG_FORMAT=json`) through
structlog, for every logger in the process (Kiln's, Celery's, granian's, the libraries'). Unset,
`kiln api` and `kiln worker` write JSON when stderr is not a terminal (a service manager or a
container collects it) and text when it is; `kiln up` asks its children for text.

A JSON line carries what is known where it was logged: the request's `request_id`,
`tenant_id` and `actor` (`app.origin`), and what a worker binds with `bind` (`job_id`, `chunk`,
`worker`). Secrets are masked in both formats: API keys, webhook secrets and bearer tokens.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRETS = re.compile(r"(?P<key>kiln_[0-9a-f]{8}_)[A-Za-z0-9_-]+"
                     r"|(?P<whsec>whsec_)[A-Za-z0-9+/=]+"
                     r"|(?P<bearer>Bearer )[^\s'\",]+")


def redact(text: str) -> str:
    """`text` with every API key, webhook secret and bearer token masked (prefixes kept)."""
    if "kiln_" not in text and "whsec_" not in text and "Bearer " not in text:
        return text
    return SECRETS.sub(lambda m: (m["key"] or m["whsec"] or m["bearer"]) + "***", text)


class RedactingFormatter(logging.Formatter):
    """The text format, with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _add_origin(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    from app import origin

    now = origin.current()
    for name in ("request_id", "tenant_id", "actor"):
        value = getattr(now, name)
        if value is not None:
            event.setdefault(name, value)
    return event


def _redact_values(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for name, value in event.items():
        if isinstance(value, str):
            event[name] = redact(value)
    return event


def json_formatter() -> logging.Formatter:
    """A stdlib formatter that renders any record as one JSON object (a dictConfig factory)."""
    import structlog

    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, _add_origin,
                           structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _redact_values,
                    structlog.processors.JSONRenderer()])


def text_formatter() -> logging.Formatter:
    return RedactingFormatter(TEXT_FORMAT)


def resolved_format(fmt: str | None, stream: Any = None) -> str:
    """KILN_LOG_FORMAT when set; else text on a terminal and json anywhere else."""
    if fmt:
        return fmt
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def quiet_task_lines() -> None:
    """Leave out Celery's line per task received and succeeded (its errors stay)."""
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)


def formatter_config(fmt: str) -> dict[str, Any]:
    """The `formatters` entry of a dictConfig for `fmt` (json or text)."""
    return {"()": f"app.logs.{'json' if fmt == 'json' else 'text'}_formatter"}


def configure(level: str, fmt: str) -> None:
    """Send every logger's records to stderr in `fmt`, at `level` and above."""
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"kiln": formatter_config(fmt)},
        "handlers": {"kiln": {"class": "logging.StreamHandler", "formatter": "kiln",
                              "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["kiln"], "level": level.upper()}})
    if fmt == "json":  # Python's warnings become records too, so every line is JSON
        logging.captureWarnings(True)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind `values` (job_id, chunk, ...) to every line logged inside the block."""
    import structlog

    with structlog.contextvars.bound_contextvars(**{k: v for k, v in values.items()
                                                     if v is not None}):
        yield
