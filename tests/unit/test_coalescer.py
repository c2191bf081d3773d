"""The API's coalescer: how many messages a burst of small jobs costs, per model window.

Time is a hand-moved clock: a burst is "jobs at the same instant" by construction, not because
the machine happened to run the loop within the quiet window (it does not under load)."""

from __future__ import annotations

import threading
import time

from app.queueing.coalescer import Coalescer
from app.settings import Tuning

QUIET_SECONDS = Tuning().quiet_seconds


class Clock:
    """The coalescer's clock, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingPublisher:
    """Stands in for Celery: records what would have been published, in order, with the
    coalescer's clock."""

    def __init__(self, clock: Clock):
        self.sent: list[tuple[str, str | None, float]] = []
        self.lock = threading.Lock()
        self.clock = clock

    def publish_jobs(self, job_ids, queue=None) -> bool:
        with self.lock:
            self.sent += [(str(j), queue, self.clock()) for j in job_ids]
        return True

    def jobs(self) -> list[str]:
        with self.lock:
            return [job for job, _, _ in self.sent]


class Drains:
    """`DrainFlags.covers` over fixed flags: pairs being drained, and pairs whose small jobs a
    chunk serves, with the most rows it takes (tests/integration/test_drain.py tests the real
    one on Redis)."""

    def __init__(self, active: set, small: dict | None = None):
        self.keys, self.small = active, small or {}

    def covers(self, model_id, queue, rows) -> bool:
        key = (model_id, queue)
        return key in self.keys or (key in self.small and rows <= self.small[key])


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def make(window: float, drains=None) -> tuple[Coalescer, RecordingPublisher, Clock]:
    clock = Clock()
    publisher = RecordingPublisher(clock)
    coalescer = Coalescer(publisher, window_seconds=window, drains=drains,
                          quiet_seconds=QUIET_SECONDS, clock=clock)
    return coalescer, publisher, clock


def settled(publisher: RecordingPublisher) -> list[str]:
    """What was sent once the flush thread has had ample real time to act (it polls every
    few milliseconds against the hand-moved clock)."""
    time.sleep(0.15)
    return publisher.jobs()


def test_a_burst_costs_one_leading_and_one_trailing_message():
    coalescer, publisher, clock = make(window=0.05)
    for i in range(20):
        coalescer.notify(("m", "q"), f"job-{i}", "q")
    assert settled(publisher) == ["job-0"], "nothing more before the window ends"
    clock.advance(0.05)
    assert wait_until(lambda: len(publisher.sent) >= 2)
    assert settled(publisher) == ["job-0", "job-19"]
    assert publisher.sent[1][2] - publisher.sent[0][2] >= 0.05 - 1e-9


def test_a_job_after_a_quiet_gap_is_announced_at_once_inside_the_window():
    """Jobs sent one at a time (each after the last has finished) are not a burst: holding each
    for the window would add up to a window of latency to every one."""
    coalescer, publisher, clock = make(window=0.5)
    coalescer.notify(("m", "q"), "first", "q")
    clock.advance(QUIET_SECONDS * 4)
    coalescer.notify(("m", "q"), "second", "q")  # quiet gap: at once, not at the window's end
    coalescer.notify(("m", "q"), "third", "q")  # a burst again: held for the trailing message
    assert settled(publisher) == ["first", "second"]
    clock.advance(0.4)
    assert settled(publisher) == ["first", "second"], "held until the window ends"
    clock.advance(0.1)
    assert wait_until(lambda: len(publisher.sent) >= 3)
    assert publisher.jobs() == ["first", "second", "third"]
    assert publisher.sent[2][2] - publisher.sent[1][2] >= 0.5 - 1e-9


def test_a_models_own_window_overrides_the_default():
    coalescer, publisher, clock = make(window=10.0)
    for i in range(5):  # a window of 0: every job is announced at once
        coalescer.notify(("eager", "q"), f"e-{i}", "q", window_seconds=0.0)
    coalescer.notify(("patient", "q"), "p-0", "q", window_seconds=0.02)
    coalescer.notify(("patient", "q"), "p-1", "q", window_seconds=0.02)
    assert settled(publisher) == [f"e-{i}" for i in range(5)] + ["p-0"]
    clock.advance(0.02)  # the model's 20 ms window, not the default 10 s
    assert wait_until(lambda: len(publisher.sent) >= 7)
    assert publisher.jobs() == [f"e-{i}" for i in range(5)] + ["p-0", "p-1"]


def test_no_message_while_a_worker_drains_the_model():
    coalescer, publisher, clock = make(window=0.01, drains=Drains({("busy", "q")}))
    for i in range(3):
        coalescer.notify(("busy", "q"), f"b-{i}", "q")
        coalescer.notify(("idle", "q"), f"i-{i}", "q")
    assert settled(publisher) == ["i-0"]
    clock.advance(0.01)
    assert wait_until(lambda: len(publisher.sent) >= 2)
    assert settled(publisher) == ["i-0", "i-2"]


def test_no_message_for_a_small_job_while_a_chunk_serves_the_models_small_jobs():
    """A chunk scoring this model's jobs of at most 128 rows between its batches takes a small
    job by itself; a larger job (or one of unknown size) still gets its message."""
    coalescer, publisher, clock = make(window=0.01, drains=Drains(set(), {("m", "q"): 128}))
    coalescer.notify(("m", "q"), "small", "q", rows=1)
    clock.advance(1)
    coalescer.notify(("m", "q"), "edge", "q", rows=128)
    clock.advance(1)
    coalescer.notify(("m", "q"), "large", "q", rows=129)
    clock.advance(1)
    coalescer.notify(("m", "q"), "unknown", "q")
    clock.advance(1)
    coalescer.notify(("m", "other-queue"), "elsewhere", "other-queue", rows=1)
    assert settled(publisher) == ["large", "unknown", "elsewhere"]


def test_a_trailing_message_is_sent_when_any_job_it_announces_is_large():
    """The trailing message carries the newest job's id but announces the whole burst: one
    large job in it is enough for the message to be sent, however small the newest is."""
    coalescer, publisher, clock = make(window=0.05, drains=Drains(set(), {("m", "q"): 128}))
    coalescer.notify(("m", "q"), "first", "q", rows=1)  # leading: small, no message
    coalescer.notify(("m", "q"), "big", "q", rows=5000)  # held for the trailing message
    coalescer.notify(("m", "q"), "newest", "q", rows=1)
    assert settled(publisher) == []
    clock.advance(0.05)
    assert wait_until(lambda: len(publisher.sent) >= 1)
    assert settled(publisher) == ["newest"]
    coalescer.notify(("m", "q"), "burst-1", "q", rows=1)  # a burst of small ones only
    coalescer.notify(("m", "q"), "burst-2", "q", rows=1)
    clock.advance(0.05)
    assert settled(publisher) == ["newest"]
