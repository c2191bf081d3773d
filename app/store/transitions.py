"""Which job status changes each store function makes, checked against the domain's TRANSITIONS."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from app.domain.states import JobStatus, can_transition

F = TypeVar("F", bound=Callable)

DECLARED: dict[str, frozenset[tuple[JobStatus, JobStatus]]] = {}


def moves(*pairs: str) -> Callable[[F], F]:
    """Declare the job status changes (`"queued->running"`) a store function can make."""
    parsed = frozenset((JobStatus(a), JobStatus(b)) for a, b in (p.split("->") for p in pairs))

    def declare(fn: F) -> F:
        DECLARED[f"{fn.__module__}.{fn.__qualname__}"] = parsed
        fn.__transitions__ = parsed  # type: ignore[attr-defined]
        return fn

    return declare


def undeclared() -> dict[str, list[tuple[str, str]]]:
    """Declared pairs that the state machine does not allow, by function (empty when sound)."""
    return {name: sorted((a.value, b.value) for a, b in pairs if not can_transition(a, b))
            for name, pairs in DECLARED.items()
            if any(not can_transition(a, b) for a, b in pairs)}
