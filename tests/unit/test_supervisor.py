"""`kiln up`'s supervisor on fake services: restarts with backoff, one line per event, giving up."""

from __future__ import annotations

import json
import re

import pytest

from workers.supervisor import GaveUp, RestartPolicy, Supervisor


class FakeService:
    """A supervised thing whose death the test decides."""

    def __init__(self, name: str, events: list[str], start_fails: bool = False):
        self.name, self.events, self.start_fails = name, events, start_fails
        self.url = f"fake://{name}"
        self.pid: int | None = None
        self.ended: str | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        if self.start_fails and self.starts > 1:
            raise OSError("address already in use")
        self.pid, self.ended = 1000 + self.starts, None
        self.events.append(f"start {self.name}")

    def exit_status(self) -> str | None:
        return self.ended

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")


def supervisor(tmp_path, lines, **policy) -> Supervisor:
    return Supervisor(tmp_path, "http://127.0.0.1:1", say=lines.append,
                      policy=RestartPolicy(**policy))


def test_the_first_restart_is_at_once_then_the_wait_doubles_up_to_a_cap():
    policy = RestartPolicy(first_delay_seconds=1, max_delay_seconds=30)
    assert [policy.delay_seconds(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]


def test_a_death_is_one_line_with_its_signal_and_the_restart_another(tmp_path):
    lines, events = [], []
    sup = supervisor(tmp_path, lines)
    redis = FakeService("redis", events)
    sup.start(redis)
    redis.ended = "signal SIGKILL"
    sup.check()
    assert len(lines) == 1 and re.fullmatch(
        r"redis \(pid 1001\) died: signal SIGKILL after \d+\.\d s; restarting it now", lines[0])
    assert json.loads((tmp_path / "up.json").read_text())["services"][0]["state"] == "restarting"
    sup.check()
    assert lines[1] == "redis restarted (pid 1002, restart 1)"
    record = json.loads((tmp_path / "up.json").read_text())["services"][0]
    assert (record["state"], record["pid"], record["restarts"], record["last_exit"]) == (
        "running", 1002, 1, "signal SIGKILL")


def test_quick_deaths_wait_longer_and_end_in_giving_up(tmp_path):
    lines, events = [], []
    sup = supervisor(tmp_path, lines, give_up_after=3, first_delay_seconds=0.05)
    api = FakeService("api", events)
    sup.start(api)
    with pytest.raises(GaveUp) as gave_up:
        for _ in range(200):
            api.ended = "exit code 1"
            sup.check()
    assert "api keeps dying within 10 s of starting (3 times in a row, last: exit code 1)" in str(
        gave_up.value)
    assert [line.rsplit(";", 1)[1] for line in lines if "died" in line] == [
        " restarting it now", " restarting it in 0.05 s"]
    assert api.starts == 3
    assert json.loads((tmp_path / "up.json").read_text())["services"][0]["state"] == "given up"


def test_a_failed_restart_counts_as_a_quick_death(tmp_path):
    lines, events = [], []
    sup = supervisor(tmp_path, lines, give_up_after=2)
    api = FakeService("api", events, start_fails=True)
    sup.start(api)
    api.ended = "exit code 1"
    sup.check()
    with pytest.raises(GaveUp, match=r"failed to start \(OSError: address already in use\)"):
        sup.check()


def test_a_death_after_a_stable_run_starts_the_count_again(tmp_path):
    lines, events = [], []
    sup = supervisor(tmp_path, lines, stable_seconds=0.0, give_up_after=2)
    worker = FakeService("worker", events)
    sup.start(worker)
    for _ in range(5):  # each run counts as stable: never given up, always restarted at once
        worker.ended = "signal SIGKILL"
        sup.check()
        sup.check()
    assert worker.starts == 6
    assert all(line.endswith("restarting it now") for line in lines if "died" in line)


def test_stop_all_stops_in_reverse_order_and_removes_the_record(tmp_path):
    lines, events = [], []
    sup = supervisor(tmp_path, lines)
    for name in ("postgres", "redis", "worker", "api"):
        sup.start(FakeService(name, events))
    assert (tmp_path / "up.json").exists()
    sup.stop_all()
    assert events[4:] == ["stop api", "stop worker", "stop redis", "stop postgres"]
    assert not (tmp_path / "up.json").exists()
