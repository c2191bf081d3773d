"""One storage interface over `KILN_STORAGE_URL` (file:// by default, s3:// through fsspec).

The only module that touches fsspec: everything else reads and writes files through `Storage`.
Objects are addressed by URI; the class-level methods serve callers that hold a stored URI and
no `Storage` (readers, workers); an instance adds the base URL new objects are named under.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, BinaryIO

import fsspec

# A stored file made of other stored objects (`Storage.put_joined`): reading its URI reads
# them in order, so joining parts into one file copies no bytes.
JOINED = ".joined.json"
READ_BYTES = 4 * 1024 * 1024


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
        closing it closes every layer. A joined file (`put_joined`) reads as the whole."""
        if uri.endswith(JOINED) and mode == "rb" and compression is None:
            return io.BufferedReader(JoinedReader(uri), READ_BYTES)
        return fsspec.open(uri, mode, compression=compression).open()

    @staticmethod
    def put_joined(uri: str, head: bytes, pieces: Sequence[str],
                   checkpoint: Callable[[], None] | None = None) -> tuple[int, str]:
        """Store at `uri` (which ends in `JOINED`) the file `head` + each of `pieces` in order,
        by reference: the pieces stay where they are, and must outlive it (a file job's parts
        do; retention removes them with the job's results). Returns its size and SHA-256, read
        through once; `checkpoint` is called between reads and may raise to stop."""
        assert uri.endswith(JOINED), uri
        digest, sizes = hashlib.sha256(head), []
        buffer = bytearray(READ_BYTES)
        for piece in pieces:
            size = 0
            with Storage.open(piece) as handle:
                while count := handle.readinto(buffer):
                    digest.update(memoryview(buffer)[:count])
                    size += count
                    if checkpoint is not None:
                        checkpoint()
            sizes.append(size)
        manifest = {"head": base64.b64encode(head).decode(), "pieces": list(pieces),
                    "sizes": sizes, "bytes": len(head) + sum(sizes)}
        with Storage.open_for_write(uri) as handle:
            handle.write(json.dumps(manifest).encode())
        return manifest["bytes"], digest.hexdigest()

    @staticmethod
    def open_for_write(uri: str) -> BinaryIO:
        """A new object at `uri`, open for writing; its folder is made first (a local path
        needs one)."""
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(fs._parent(path), exist_ok=True)
        return fs.open(path, "wb")

    @staticmethod
    def read_bytes(uri: str) -> bytes:
        with Storage.open(uri) as handle:
            return handle.read()

    @staticmethod
    def size(uri: str) -> int:
        if uri.endswith(JOINED):
            return JoinedReader(uri).size
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.size(path)

    @staticmethod
    def exists(uri: str) -> bool:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)

    @staticmethod
    def remove(uri: str, missing_ok: bool = True) -> None:
        """Delete an object, or with a trailing / a folder and all it holds; one that is not
        there is an error only when not `missing_ok`. A joined file's pieces are not removed
        with it: they have owners of their own."""
        fs, path = fsspec.core.url_to_fs(uri)
        if missing_ok and not fs.exists(path):
            return
        fs.rm(path, recursive=uri.endswith("/"))


class JoinedReader(io.RawIOBase):
    """A joined file (`Storage.put_joined`) as one seekable stream over its head and pieces."""

    def __init__(self, uri: str):
        with fsspec.open(uri, "rb") as handle:
            manifest = json.loads(handle.read())
        self.head = base64.b64decode(manifest["head"])
        self.pieces: list[str] = manifest["pieces"]
        # starts[i]: the offset of piece i; the head is piece -1, at 0
        self.starts = list(accumulate(manifest["sizes"], initial=len(self.head)))
        self.size: int = manifest["bytes"]
        self.position, self.index, self.handle = 0, -1, None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        self._close_piece()
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.position < len(self.head):
            count = min(len(view), len(self.head) - self.position)
            view[:count] = self.head[self.position:self.position + count]
            self.position += count
            return count
        if self.position >= self.size:
            return 0
        index = bisect.bisect_right(self.starts, self.position) - 1
        if index != self.index:
            self._close_piece()
            self.handle = fsspec.open(self.pieces[index], "rb").open()
            self.handle.seek(self.position - self.starts[index])
            self.index = index
        count = self.handle.readinto(view[:self.starts[index + 1] - self.position])
        if not count:
            raise OSError(f"{self.pieces[index]} is shorter than when it was joined")
        self.position += count
        return count

    def _close_piece(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle, self.index = None, -1

    def close(self) -> None:
        self._close_piece()
        super().close()


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
