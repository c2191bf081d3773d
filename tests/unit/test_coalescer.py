"""The API's coalescer: how many messages a burst of small jobs costs, per model window."""

from __future__ import annotations

import threading
import time

from app.queueing.coalescer import Coalescer
from app.settings import Tuning

QUIET_SECONDS = Tuning().quiet_seconds


class RecordingPublisher:
    """Stands in for Celery: records what would have been published, in order."""

    def __init__(self):
        self.sent: list[tuple[str, str | None, float]] = []
        self.lock = threading.Lock()

    def publish_jobs(self, job_ids, queue=None) -> bool:
        with self.lock:
            self.sent += [(str(j), queue, time.monotonic()) for j in job_ids]
        return True


class Drains:
    def __init__(self, active: set):
        self.keys = active

    def active(self, model_id, queue) -> bool:
        return (model_id, queue) in self.keys


def wait_until(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_burst_costs_one_leading_and_one_trailing_message():
    publisher = RecordingPublisher()
    coalescer = Coalescer(publisher, window_seconds=0.05, quiet_seconds=QUIET_SECONDS)
    for i in range(20):
        coalescer.notify(("m", "q"), f"job-{i}", "q")
    wait_until(lambda: len(publisher.sent) >= 2)
    time.sleep(0.1)
    assert [job for job, _, _ in publisher.sent] == ["job-0", "job-19"]
    assert publisher.sent[1][2] - publisher.sent[0][2] >= 0.045  # not before the window ends


def test_a_job_after_a_quiet_gap_is_announced_at_once_inside_the_window():
    """Jobs sent one at a time (each after the last has finished) are not a burst: holding each
    for the window would add up to a window of latency to every one."""
    publisher = RecordingPublisher()
    coalescer = Coalescer(publisher, window_seconds=0.5, quiet_seconds=QUIET_SECONDS)
    coalescer.notify(("m", "q"), "first", "q")
    time.sleep(QUIET_SECONDS * 4)
    coalescer.notify(("m", "q"), "second", "q")  # quiet gap: at once, not at the window's end
    coalescer.notify(("m", "q"), "third", "q")  # a burst again: held for the trailing message
    assert [job for job, _, _ in publisher.sent] == ["first", "second"]
    assert publisher.sent[1][2] - publisher.sent[0][2] < 0.25
    wait_until(lambda: len(publisher.sent) >= 3, timeout=2.0)
    assert [job for job, _, _ in publisher.sent] == ["first", "second", "third"]
    assert publisher.sent[2][2] - publisher.sent[1][2] >= 0.45


def test_a_models_own_window_overrides_the_default():
    publisher = RecordingPublisher()
    coalescer = Coalescer(publisher, window_seconds=10.0, quiet_seconds=QUIET_SECONDS)
    for i in range(5):  # a window of 0: every job is announced at once
        coalescer.notify(("eager", "q"), f"e-{i}", "q", window_seconds=0.0)
    coalescer.notify(("patient", "q"), "p-0", "q", window_seconds=0.02)
    coalescer.notify(("patient", "q"), "p-1", "q", window_seconds=0.02)
    wait_until(lambda: len(publisher.sent) >= 7)
    sent = [job for job, _, _ in publisher.sent]
    assert sent[:5] == [f"e-{i}" for i in range(5)]
    assert sent[5:] == ["p-0", "p-1"], "the trailing message must follow the model's 20 ms window"


def test_no_message_while_a_worker_drains_the_model():
    publisher = RecordingPublisher()
    coalescer = Coalescer(publisher, window_seconds=0.01, drains=Drains({("busy", "q")}),
                          quiet_seconds=QUIET_SECONDS)
    for i in range(3):
        coalescer.notify(("busy", "q"), f"b-{i}", "q")
        coalescer.notify(("idle", "q"), f"i-{i}", "q")
    wait_until(lambda: len(publisher.sent) >= 2)
    time.sleep(0.05)
    assert [job for job, _, _ in publisher.sent] == ["i-0", "i-2"]
