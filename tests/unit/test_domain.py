import math

import pytest

from app.domain.batching import batches, rows_per_batch, run_isolated
from app.domain.states import JobStatus, can_transition, cancel_target, is_terminal
from app.domain.validation import check_record, check_records

COLUMNS = ["a", "b"]


def test_terminal_states_have_no_way_out():
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED):
        assert is_terminal(status)
        assert not any(can_transition(status, target) for target in JobStatus)


def test_running_job_can_be_requeued_by_the_reconciler_but_not_revalidated():
    assert can_transition("running", "queued")
    assert not can_transition("running", "validating")
    assert can_transition("queued", "running")
    assert not can_transition("succeeded", "running")


def test_cancel_is_immediate_only_when_nobody_runs_the_job():
    assert cancel_target("queued") is JobStatus.CANCELLED
    assert cancel_target("running") is JobStatus.CANCELLING
    assert cancel_target("succeeded") is None
    assert cancel_target("cancelling") is None


@pytest.mark.parametrize("record, field, code", [
    ({"a": 1}, "b", "missing_field"),
    ({"a": 1, "b": "2"}, "b", "not_numeric"),
    ({"a": True, "b": 2}, "a", "not_numeric"),
    ({"a": math.nan, "b": 2}, "a", "not_numeric"),
    ([1, 2], None, "not_an_object"),
])
def test_bad_records_name_their_field(record, field, code):
    error = check_record(7, record, COLUMNS)
    assert error is not None
    assert (error.index, error.field, error.code) == (7, field, code)
    assert "7" in error.message


def test_good_records_pass_and_extra_fields_are_ignored():
    assert check_record(0, {"a": 1, "b": 2.5, "note": "x"}, COLUMNS) is None


def test_check_records_reports_indexes_in_order_up_to_a_limit():
    records = [{"a": 1, "b": 1}, {"a": 1}, {"b": 1}, {"a": "x", "b": 1}]
    errors = check_records(records, {"kind": "tabular", "columns": COLUMNS}, limit=2)
    assert [e.index for e in errors] == [1, 2]


def test_text_models_need_a_string_field():
    signature = {"kind": "text", "text_field": "text"}
    errors = check_records([{"text": "ok"}, {"text": 3}, {}, "x"], signature)
    assert [(e.index, e.code) for e in errors] == [(1, "not_a_string"), (2, "missing_field"),
                                                   (3, "not_an_object")]


def test_batches_cover_every_item_once_in_order():
    items = list(range(10))
    chunks = list(batches(items, 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [x for c in chunks for x in c] == items
    with pytest.raises(ValueError):
        list(batches(items, 0))


def test_a_models_max_batch_size_wins_over_the_device_default():
    defaults = {"cpu_default": 1024, "gpu_default": 4096}
    assert rows_per_batch({}, on_gpu=False, **defaults) == 1024
    assert rows_per_batch({"kind": "tabular_classifier"}, on_gpu=True, **defaults) == 4096
    assert rows_per_batch({"max_batch_size": 8}, on_gpu=False, **defaults) == 8
    assert rows_per_batch({"max_batch_size": 8}, on_gpu=True, **defaults) == 8
    # `batch_size` is the text embedder's micro-batch inside one model call, not rows per batch
    assert rows_per_batch({"batch_size": 32}, on_gpu=False, **defaults) == 1024


def test_run_isolated_fails_only_the_bad_rows():
    calls = []

    def model(rows):
        calls.append(len(rows))
        if any(r < 0 for r in rows):
            raise ValueError("negative")
        return [r * 2 for r in rows]

    outputs = run_isolated([1, -1, 3, 4, -5, 6, 7, 8], model, lambda row, exc: ("error", row))
    assert outputs == [2, ("error", -1), 6, 8, ("error", -5), 12, 14, 16]
    assert calls[0] == 8  # the whole batch is tried first


def test_run_isolated_rejects_a_model_that_drops_outputs():
    with pytest.raises(ValueError):
        run_isolated([1, 2], lambda rows: [1], lambda row, exc: None)
