"""The API's lookup cache: a missing key is loaded once however many threads want it."""

import threading
import time

import pytest

from app.caching import LoadingCache, cached_or_loaded


def test_concurrent_misses_of_one_key_run_one_load_and_share_its_value():
    cache = LoadingCache(100, ttl_seconds=60)
    loads = []

    def load():
        loads.append(threading.get_ident())
        time.sleep(0.05)  # a query in flight while the other threads arrive
        return {"tenant": "a"}

    start, results = threading.Barrier(8), []

    def request():
        start.wait()
        results.append(cache.get("key", load))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(results) == 8 and all(result is results[0] for result in results)
    assert cache.get("other", lambda: "b") == "b" and len(loads) == 1  # keys are separate


def test_a_failed_load_is_its_callers_error_and_is_not_cached():
    cache = LoadingCache(100, ttl_seconds=60)

    def refuse():
        raise LookupError("unknown key")

    with pytest.raises(LookupError):
        cache.get("key", refuse)
    assert cache.get("key", lambda: "found") == "found"
    assert cache.get("key", refuse) == "found"


def test_an_entry_is_loaded_again_after_its_ttl():
    cache = LoadingCache(100, ttl_seconds=0.05)
    assert cache.get("key", lambda: 1) == 1
    assert cache.get("key", lambda: 2) == 1
    time.sleep(0.08)
    assert cache.get("key", lambda: 2) == 2


def test_no_cache_loads_every_time():
    loads = iter(range(3))
    assert [cached_or_loaded(None, "key", lambda: next(loads)) for _ in range(3)] == [0, 1, 2]
