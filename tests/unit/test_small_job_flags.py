"""When a chunk flags a model's small jobs (so that they get no message): only while its batches
are short, since a job without a message waits for the chunk's next look between batches
(tests/integration/test_mixed_latency.py counts the messages on a real worker)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from app.settings import Settings
from workers.small_jobs import FLAG_MAX_BATCH_SECONDS, SmallJobs


def looks(*gaps: float) -> SmallJobs:
    """A chunk's SmallJobs after `serve` calls this far apart (checks off: nothing is read)."""
    settings = Settings(tuning={"small_job_check_ms": 0})
    small = SmallJobs(SimpleNamespace(settings=settings), queue=None)
    small.serve()
    for gap in gaps:
        time.sleep(gap)
        assert small.serve() == 0
    return small


def test_no_flag_before_the_chunk_has_timed_a_batch():
    assert not looks().looks_often


def test_short_batches_flag_and_a_slow_one_lets_the_flags_lapse():
    assert looks(0.01).looks_often
    assert not looks(0.01, FLAG_MAX_BATCH_SECONDS + 0.05).looks_often
    assert looks(FLAG_MAX_BATCH_SECONDS + 0.05, 0.01).looks_often, "short again: flags again"
