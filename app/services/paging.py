"""One pagination scheme for every list: `limit` items after the item whose id is `after`.

A page is fetched with one row more than asked for, so that `has_more` costs no second query.
An `after` that names no item of the caller's (never one, or deleted since) is a 404: a client
paging from a deleted item learns it, instead of seeing a short list end early.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy import Select, tuple_

from app.errors import NotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.services.auth import Caller

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


def keyset_page(session: Session, caller: Caller, entity, query: Select, *, after: str | None,
                limit: int, what: str, newest_first: bool) -> Page:
    """One page of `query` (already scoped to the caller) in (created_at, id) order: the rows
    after the caller's row `after`, whose absence is a 404 naming `what`."""
    from app.services.auth import get_owned

    key = tuple_(entity.created_at, entity.id)
    if after:
        anchor = get_owned(session, caller, entity, after, f"{what} (`after`)")
        mark = tuple_(anchor.created_at, anchor.id)
        query = query.where(key < mark if newest_first else key > mark)
    order = ((entity.created_at.desc(), entity.id.desc()) if newest_first
             else (entity.created_at, entity.id))
    return first_page(list(session.scalars(query.order_by(*order).limit(limit + 1))), limit)
