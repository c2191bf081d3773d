"""One pagination scheme for every list: `limit` items after the item whose id is `after`.

A page is fetched with one row more than asked for, so that `has_more` costs no second query.
An `after` that names no item of the caller's (never one, or deleted since) is a 404: a client
paging from a deleted item learns it, instead of seeing a short list end early.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.errors import NotFound

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def first_page(rows: Sequence[T], limit: int) -> Page[T]:
    """A page from rows fetched with `limit + 1`."""
    return Page(list(rows[:limit]), len(rows) > limit)


def page_after(rows: Sequence[T], ident: Callable[[T], str], after: str | None,
               limit: int, what: str) -> Page[T]:
    """A page of an ordered list held in memory (short lists: models, for instance)."""
    start = 0
    if after:
        ids = [ident(row) for row in rows]
        if after not in ids:
            raise NotFound(f"`after`: no {what} {after!r}")
        start = ids.index(after) + 1
    return first_page(rows[start:start + limit + 1], limit)
