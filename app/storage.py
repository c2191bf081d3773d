"""One storage interface over `KILN_STORAGE_URL` (file:// by default, s3:// through fsspec).

The only module that touches fsspec: everything else reads and writes files through `Storage`.
Objects are addressed by URI; the class-level methods serve callers that hold a stored URI and
no `Storage` (readers, workers); an instance adds the base URL new objects are named under.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, BinaryIO

import fsspec


class Storage:
    """Objects addressed by key under one base URL."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.base_url)

    @property
    def local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                          else (self.fs.protocol,))

    def spool(self) -> HashedSpool | None:
        """A temporary file for an upload in this storage's own folder, so that storing it is
        a rename (`adopt`); None for remote storage."""
        if not self.local:
            return None
        folder = os.path.join(self.root, ".spool")
        os.makedirs(folder, exist_ok=True)
        return HashedSpool(folder)

    def adopt(self, spool: Any, uri: str) -> tuple[int, str] | None:
        """Move a spool of this storage's (`spool`) to `uri`: its size and SHA-256, or None when
        `spool` is not one (copy it instead)."""
        if not isinstance(spool, HashedSpool) or not self.local:
            return None
        _, path = fsspec.core.url_to_fs(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        spool.file.flush()
        os.replace(spool.name, path)
        spool.adopted = True
        return spool.size, spool.digest.hexdigest()

    def uri(self, key: str) -> str:
        return f"{self.base_url}/{key.lstrip('/')}"

    def put_bytes(self, key: str, data: bytes) -> tuple[str, str]:
        """Write an object; returns its URI and SHA-256."""
        uri = self.uri(key)
        with self.open_for_write(uri) as handle:
            handle.write(data)
        return uri, hashlib.sha256(data).hexdigest()

    @staticmethod
    def open(uri: str, mode: str = "rb", compression: str | None = None) -> BinaryIO:
        """An open file (decompressed as it is read when `compression` is given, e.g. gzip);
        closing it closes every layer."""
        return fsspec.open(uri, mode, compression=compression).open()

    @staticmethod
    def open_for_write(uri: str) -> BinaryIO:
        """A new object at `uri`, open for writing; its folder is made first (a local path
        needs one)."""
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(fs._parent(path), exist_ok=True)
        return fs.open(path, "wb")

    @staticmethod
    def read_bytes(uri: str) -> bytes:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()

    @staticmethod
    def size(uri: str) -> int:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.size(path)

    @staticmethod
    def exists(uri: str) -> bool:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)

    @staticmethod
    def remove(uri: str, missing_ok: bool = True) -> None:
        """Delete an object; one that is not there is an error only when not `missing_ok`."""
        fs, path = fsspec.core.url_to_fs(uri)
        if missing_ok and not fs.exists(path):
            return
        fs.rm(path)


class HashedSpool:
    """A temporary upload file that hashes and counts what is written to it (werkzeug's
    multipart parser writes the file part here; `Storage.adopt` then moves it into place), and
    removes itself when closed unless it was adopted."""

    def __init__(self, folder: str):
        self.file = tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", delete=False)
        self.name, self.digest, self.size, self.adopted = self.file.name, hashlib.sha256(), 0, False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        if not self.adopted:
            try:
                os.unlink(self.name)
            except FileNotFoundError:
                pass

    def __getattr__(self, name: str) -> Any:  # read, readline, seek, tell, flush ... as a file
        return getattr(self.file, name)
