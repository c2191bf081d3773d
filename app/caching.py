"""A short-lived cache of database lookups that loads each missing key once.

The API caches API keys and model lookups for `KILN_TUNING__CACHE_SECONDS`. When an entry
expires under load, every request thread that wants it misses at the same moment; each used to
run the same query, on a connection of its own (a stampede every few seconds, and with it
connections the pool had no room for). Here the first thread loads and the others wait for its
value (cachetools' `condition`); if the load fails, the error is its own caller's and the next
caller loads again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache, cached

V = TypeVar("V")


class LoadingCache(Generic[V]):
    def __init__(self, maxsize: int, ttl_seconds: float):
        self._get = cached(TTLCache(maxsize, ttl_seconds), key=lambda key, _load: key,
                           condition=threading.Condition())(lambda _key, load: load())

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value of `key`, else `load()`'s, kept for the TTL (exceptions are not)."""
        return self._get(key, load)


def cached_or_loaded(cache: LoadingCache[V] | None, key: Hashable, load: Callable[[], V]) -> V:
    return load() if cache is None else cache.get(key, load)
