"""The OpenAI dialect's pure parts: input lines to Kiln rows, Kiln rows back to dialect lines."""

import orjson

from app.domain import openai_batch as dialect


def line(**fields) -> bytes:
    request = {"custom_id": "c1", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "minilm", "input": "hello world"}}
    request.update(fields)
    return orjson.dumps(request)


def test_an_embeddings_line_becomes_one_row_per_input():
    one = dialect.parse_line(line(), 3, "/v1/embeddings")
    assert isinstance(one, dialect.Accepted) and one.model == "minilm"
    assert one.rows == [{"text": "hello world", "openai_row": "3:0", "openai_custom_id": "c1"}]
    two = dialect.parse_line(line(body={"model": "minilm", "input": ["a", "b"]}), 4,
                             "/v1/embeddings")
    assert [row["openai_row"] for row in two.rows] == ["4:0", "4:1"]


def test_a_predictions_line_takes_a_record_or_records():
    body = {"model": "digits", "input": [{"x": 1}, {"x": 2}]}
    parsed = dialect.parse_line(line(url="/v1/predictions", body=body), 1, "/v1/predictions")
    assert [row["x"] for row in parsed.rows] == [1, 2]


def test_wrong_url_method_or_body_fail_the_line_alone():
    cases = [(line(url="/v1/chat/completions"), "url"), (line(method="GET"), "method"),
             (line(body=[1]), "body"), (line(body={"input": "x"}), "body.model"),
             (line(body={"model": "m", "input": 7}), "body.input")]
    for raw, param in cases:
        parsed = dialect.parse_line(raw, 1, "/v1/embeddings")
        assert isinstance(parsed, dialect.Rejected) and parsed.param == param, raw


def test_unreadable_lines_make_the_file_invalid():
    assert dialect.parse_line(b"{nope", 2, "/v1/embeddings").code == "invalid_json_line"
    assert dialect.parse_line(b"[1]", 2, "/v1/embeddings").code == "invalid_json_line"
    missing = dialect.parse_line(orjson.dumps({"method": "POST"}), 5, "/v1/embeddings")
    assert isinstance(missing, dialect.LineError) and missing.as_dict()["line"] == 5
    assert dialect.parse_line(b"  \n", 6, "/v1/embeddings") is None


def test_windows_and_statuses():
    assert dialect.window_seconds("24h") == 86400
    assert dialect.window_seconds("1.5s") == 1.5
    assert dialect.window_seconds("soon") is None and dialect.window_seconds("0s") is None
    assert dialect.STATUS["queued"] == dialect.STATUS["running"] == "in_progress"
    assert dialect.STATUS["succeeded"] == "completed"


def test_a_lines_rows_join_into_one_output_or_error_line():
    rows = [{"row_index": 0, "output": {"embedding": [0.5, 0.5]}},
            {"row_index": 1, "output": {"embedding": [1.0, 0.0]}}]
    ok, out = dialect.joined_line("b", 1, "c1", "/v1/embeddings", "minilm", rows,
                                  ["a b", "c"], "succeeded")
    assert ok and out["error"] is None and out["response"]["status_code"] == 200
    assert [d["index"] for d in out["response"]["body"]["data"]] == [0, 1]
    assert out["response"]["body"]["usage"]["prompt_tokens"] == 3
    failed = [rows[0], {"row_index": 1, "error_code": "too_long", "error_message": "no"}]
    ok, err = dialect.joined_line("b", 1, "c1", "/v1/embeddings", "minilm", failed, [], "succeeded")
    assert not ok and err["response"]["body"]["error"]["code"] == "too_long"
    ok, gone = dialect.joined_line("b", 1, "c1", "/v1/embeddings", "minilm", [rows[0], None],
                                   [], "expired")
    assert not ok and gone["response"] is None and gone["error"]["code"] == "batch_expired"
