"""Usage arithmetic: model time measured around the calls, shared by rows, bytes as JSON."""

import uuid

import orjson
import pytest
from rich.console import Console

from app.cli.usage import usage_table
from app.store.jobs import ClaimedJob, Tally
from app.store.lifecycle import Usage
from workers.inline import Row, job_tallies
from workers.runtime.clocked import ClockedModel


class SleepyModel:
    """A runtime whose `run` takes a known time per call (a fake of the real interface)."""

    def __init__(self):
        self.calls = 0

    def run(self, records):
        import time

        self.calls += 1
        time.sleep(0.02)
        if any(r.get("bad") for r in records):
            raise ValueError("bad record")
        return [{"label": 1} for _ in records]


def test_the_clock_adds_up_each_call_even_those_that_raise_and_laps():
    clock = ClockedModel(SleepyModel())
    assert not hasattr(clock, "run_features")  # callers choose their path with hasattr
    clock.run([{}])
    with pytest.raises(ValueError):
        clock.run([{"bad": True}])
    first = clock.lap()
    assert 0.04 <= first < 0.2 and clock.calls == 2
    clock.run([{}])
    assert 0.02 <= clock.lap() < first and clock.lap() == 0.0


def job(total: int, attempt: int = 1) -> ClaimedJob:
    return ClaimedJob(uuid.uuid4(), uuid.uuid4(), attempt, uuid.uuid4(), [], total)


def test_tallies_share_model_seconds_by_rows_and_count_json_bytes():
    a, b = job(3, attempt=2), job(1)
    records = [{"x": 1}, {"x": 22}, {"x": 333}, {"y": 4}]
    rows = [Row(a, 0, records[0]), Row(a, 1, records[1]), Row(a, 2, records[2]),
            Row(b, 0, records[3])]
    outputs = [{"label": 1}, {"error": {"code": "inference_error", "message": "m"}},
               {"label": 3}, {"label": 4}]
    tallies = job_tallies(rows, outputs, 2.0)
    size = lambda values: sum(len(orjson.dumps(v)) for v in values)  # noqa: E731
    assert tallies[a.id] == Tally(2, 2, 1, Usage(1.5, size(records[:3]), size(outputs[:3])))
    assert tallies[b.id] == Tally(1, 1, 0, Usage(0.5, size(records[3:]), size(outputs[3:])))


def test_tallies_add_up_per_attempt():
    total = Tally(1, 2, 1, Usage(0.5, 10, 20)) + Tally(1, 1, 0, Usage(0.25, 1, 2))
    assert total == Tally(1, 3, 1, Usage(0.75, 11, 22)) and total.rows == 4


def test_the_usage_table_has_a_row_per_group_and_the_total():
    totals = {"jobs": 3, "rows": 1200, "failed_rows": 1, "model_seconds": 0.5,
              "bytes_in": 2048, "bytes_out": 4096}
    report = {"tenant": "acme", "start": None, "end": "2026-12-04T00:00:00Z", "totals": totals,
              "groups": [{"model": "digits", **totals}]}
    console = Console(width=120, record=True)
    console.print(usage_table(report))
    text = console.export_text()
    assert "usage of acme (… to 2026-12-04T00:00:00Z)" in text
    lines = [line for line in text.splitlines() if "digits" in line or "total" in line]
    assert len(lines) == 2 and all("1,200" in line and "0.500" in line for line in lines)
    assert lines[0].index("digits") < lines[0].index("1,200")
