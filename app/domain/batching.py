"""Split work into model batches and isolate rows that make the model fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start:start + size]


def rows_per_batch(processing: Mapping[str, Any], *, on_gpu: bool, cpu_default: int,
                   gpu_default: int) -> int:
    """The model's own `max_batch_size` when its processing sets one, else the device's default.

    A GPU pays a fixed cost per call and has the memory for far larger batches than a CPU core,
    so its default is larger; a model that needs smaller batches (memory, latency) says so.
    """
    own = processing.get("max_batch_size")
    return int(own) if own is not None else (gpu_default if on_gpu else cpu_default)


def run_isolated(items: Sequence[T], run: Callable[[Sequence[T]], list[R]],
                 on_error: Callable[[T, Exception], R]) -> list[R]:
    """Run a whole batch; when it raises, bisect so that only the rows that fail get an error."""
    if not items:
        return []
    try:
        outputs = run(items)
    except Exception as exc:  # noqa: BLE001 - the model may raise anything; it is isolated here
        if len(items) == 1:
            return [on_error(items[0], exc)]
        middle = len(items) // 2
        return (run_isolated(items[:middle], run, on_error)
                + run_isolated(items[middle:], run, on_error))
    if len(outputs) != len(items):
        raise ValueError(f"model returned {len(outputs)} outputs for {len(items)} inputs")
    return outputs
