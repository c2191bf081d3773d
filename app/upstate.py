"""What a running `kiln up` supervises, recorded in `KILN_HOME/up.json` for `kiln status`.

`kiln up` (in `workers`) writes it; `kiln status` (in `app`) reads it: the file is the only
thing they share, so `app` never imports `workers`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.embedded import process_alive

RECORD_NAME = "up.json"


@dataclass
class ServiceState:
    """One supervised service: `running`, `restarting`, `given up` or `stopped`."""

    name: str
    state: str
    pid: int | None = None
    started_at: float | None = None  # wall-clock seconds of the current run's start
    restarts: int = 0
    url: str | None = None
    last_exit: str | None = None

    def uptime_seconds(self, now: float | None = None) -> float | None:
        if self.state != "running" or self.started_at is None:
            return None
        return max(0.0, (now or time.time()) - self.started_at)


@dataclass
class UpState:
    """The `kiln up` process and its services, in the order they start."""

    pid: int
    api_url: str
    started_at: float
    services: list[ServiceState] = field(default_factory=list)


def up_record(home: Path) -> Path:
    return home / RECORD_NAME


def write_up_state(home: Path, state: UpState) -> None:
    """Write atomically: a reader sees the previous record or this one, never half of one."""
    record = up_record(home)
    partial = record.with_name(f".{RECORD_NAME}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(asdict(state), indent=2))
    os.replace(partial, record)


def read_up_state(home: Path) -> UpState | None:
    """The record of the `kiln up` running under `home`; None when none runs (or it died)."""
    try:
        raw = json.loads(up_record(home).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not process_alive(raw.get("pid")):
        return None
    services = [ServiceState(**service) for service in raw.pop("services", [])]
    return UpState(**raw, services=services)
