"""`kiln` on a slow disk: every read and write of `file://` storage in this process (and the
worker's forked children) takes time in proportion to its size, as on a slow network disk or
object store. Nothing else changes: real Postgres, Redis, Celery and ONNX Runtime.

Run as `python -m tests.slowdisk worker ...` (the arguments of `kiln`), with
`SLOWDISK_BYTES_PER_SECOND` set (default 4 MiB/s).

A disk can also hang: with `SLOWDISK_STALL_TRIGGER` naming a path, the next part file opened for
writing after that file appears waits `SLOWDISK_STALL_SECONDS` (default 15) first, as a write to
a hung network disk does. One open takes the trigger (it removes the file), so one part stalls.
"""

from __future__ import annotations

import os
import time

from fsspec.implementations.local import LocalFileOpener

from tests import localdisk

PAUSE_EVERY_BYTES = 32 * 1024


class SlowHandle:
    """A file object that pays for its bytes: sleeps once each `PAUSE_EVERY_BYTES`."""

    def __init__(self, handle, bytes_per_second: float):
        self._handle, self._rate, self._owed = handle, bytes_per_second, 0

    def _pay(self, size: int) -> None:
        self._owed += size
        if self._owed >= PAUSE_EVERY_BYTES:
            time.sleep(self._owed / self._rate)
            self._owed = 0

    def read(self, *args):
        data = self._handle.read(*args)
        self._pay(len(data))
        return data

    def readinto(self, buffer):
        size = self._handle.readinto(buffer)
        self._pay(size or 0)
        return size

    def readline(self, *args):
        line = self._handle.readline(*args)
        self._pay(len(line))
        return line

    def write(self, data):
        self._pay(len(data))
        return self._handle.write(data)

    def __iter__(self):
        return self

    def __next__(self):
        line = self._handle.readline()
        if not line:
            raise StopIteration
        self._pay(len(line))
        return line

    def __getattr__(self, name):
        return getattr(self._handle, name)


def stall_if_triggered(path: str, mode: str) -> None:
    """Hang once, in the first process to open a part for writing after the trigger appears."""
    trigger = os.environ.get("SLOWDISK_STALL_TRIGGER")
    if not trigger or "w" not in mode or "/parts/" not in path:
        return
    try:
        os.unlink(trigger)
    except FileNotFoundError:
        return
    time.sleep(float(os.environ.get("SLOWDISK_STALL_SECONDS", 15)))


class SlowOpener(LocalFileOpener):
    def _open(self):
        stall_if_triggered(self.path, self.mode)
        super()._open()
        if not isinstance(self.f, SlowHandle):
            self.f = SlowHandle(self.f, float(os.environ.get("SLOWDISK_BYTES_PER_SECOND",
                                                             4 * 1024 * 1024)))

    def read(self, *args, **kwargs):
        return self.f.read(*args, **kwargs)

    def readline(self, *args):
        return self.f.readline(*args)

    def readinto(self, buffer):
        return self.f.readinto(buffer)

    def write(self, *args, **kwargs):
        return self.f.write(*args, **kwargs)

    def __iter__(self):
        return iter(self.f)


def install() -> None:
    """Make `file://` (and plain paths) slow in this process and the ones it forks."""
    localdisk.install(SlowOpener)


if __name__ == "__main__":
    localdisk.run_kiln(SlowOpener)
