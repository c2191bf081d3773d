"""One storage interface over `KILN_STORAGE_URL` (file:// by default, s3:// through fsspec)."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import fsspec


class Storage:
    """Objects addressed by key under one base URL."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.base_url)

    def uri(self, key: str) -> str:
        return f"{self.base_url}/{key.lstrip('/')}"

    def put_bytes(self, key: str, data: bytes) -> tuple[str, str]:
        """Write an object; returns its URI and SHA-256."""
        uri = self.uri(key)
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(fs._parent(path), exist_ok=True)
        with fs.open(path, "wb") as handle:
            handle.write(data)
        return uri, hashlib.sha256(data).hexdigest()

    @staticmethod
    def open(uri: str, mode: str = "rb") -> BinaryIO:
        return fsspec.open(uri, mode).open()

    @staticmethod
    def read_bytes(uri: str) -> bytes:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
