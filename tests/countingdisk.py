"""`kiln` on a disk that counts: every `file://` handle this process (and the worker's forked
children) opens appends `path<TAB>bytes read` to `COUNTINGDISK_LOG` when it closes. Nothing else
changes: real Postgres, Redis, Celery and ONNX Runtime.

Run as `python -m tests.countingdisk worker ...` (the arguments of `kiln`).
"""

from __future__ import annotations

import os

from fsspec.implementations.local import LocalFileOpener

from tests import localdisk


class CountingOpener(LocalFileOpener):
    bytes_read = 0

    def read(self, *args, **kwargs):
        data = self.f.read(*args, **kwargs)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        size = self.f.readinto(buffer) or 0
        self.bytes_read += size
        return size

    def readline(self, *args):
        line = self.f.readline(*args)
        self.bytes_read += len(line)
        return line

    def __iter__(self):
        return iter(self.readline, b"")

    def __exit__(self, *exc):  # LocalFileOpener's closes its file without `close`
        self.close()

    def close(self):
        if "r" in self.mode and not self.closed:
            with open(os.environ["COUNTINGDISK_LOG"], "a") as log:
                log.write(f"{self.path}\t{self.bytes_read}\n")
        super().close()


def install() -> None:
    """Count the bytes read from `file://` (and plain paths) in this process and its forks."""
    localdisk.install(CountingOpener)


def bytes_read(log: str) -> dict[str, int]:
    """Bytes read per path, all handles together."""
    totals: dict[str, int] = {}
    if os.path.exists(log):
        with open(log) as handle:
            for line in handle:
                path, count = line.rstrip("\n").rsplit("\t", 1)
                totals[path] = totals.get(path, 0) + int(count)
    return totals


if __name__ == "__main__":
    localdisk.run_kiln(CountingOpener)
