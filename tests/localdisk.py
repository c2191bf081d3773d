"""What tests.countingdisk and tests.slowdisk share: a `file://` filesystem whose files open
through another `LocalFileOpener`, installed in this process and the ones it forks, and a
`kiln` entry point that runs with it."""

from __future__ import annotations

import fsspec
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem


def filesystem(opener: type[LocalFileOpener]) -> type[LocalFileSystem]:
    class Wrapped(LocalFileSystem):
        def _open(self, path, mode="rb", block_size=None, **kwargs):
            path = self._strip_protocol(path)
            if self.auto_mkdir and "w" in mode:
                self.makedirs(self._parent(path), exist_ok=True)
            return opener(path, mode, fs=self, **kwargs)

    Wrapped.__name__ = f"{opener.__name__}FileSystem"
    return Wrapped


def install(opener: type[LocalFileOpener]) -> None:
    """`file://` (and plain paths) open through `opener` in this process and its forks."""
    wrapped = filesystem(opener)
    fsspec.register_implementation("file", wrapped, clobber=True)
    fsspec.register_implementation("local", wrapped, clobber=True)
    LocalFileSystem.clear_instance_cache()


def run_kiln(opener: type[LocalFileOpener]) -> None:
    from workers.cli import main

    install(opener)
    main()
