"""The OpenAI Batch dialect as plain values: input lines in, Kiln rows out; Kiln rows in, the
dialect's output and error lines out; statuses and completion windows.

A batch is a Kiln file job. Each accepted input line becomes one Kiln row per input (an
embeddings line with a list of strings becomes one row per string), tagged with `ROW_COLUMN`
(`"<line>:<k>"`) and `CUSTOM_ID_COLUMN`, which the worker carries to the output; the rows of a
line are joined back into one dialect line afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

ENDPOINTS = ("/v1/embeddings", "/v1/predictions")
ROW_COLUMN = "openai_row"
CUSTOM_ID_COLUMN = "openai_custom_id"
TEXT_FIELD = "text"

# Kiln job status -> the batch status the official client knows
STATUS = {"validating": "validating", "queued": "in_progress", "running": "in_progress",
          "finalizing": "finalizing", "succeeded": "completed", "failed": "failed",
          "cancelling": "cancelling", "cancelled": "cancelled", "expired": "expired"}
# what a line no worker reached says, by the batch's final Kiln status
UNFINISHED = {"expired": ("batch_expired", "the batch expired before this request ran"),
              "cancelled": ("batch_cancelled", "the batch was cancelled before this request ran"),
              "failed": ("batch_failed", "the batch failed before this request ran")}
WINDOW = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> float | None:
    """Seconds of a completion window such as `24h` (the client's) or `30s`; None if not one."""
    match = WINDOW.match(window.strip()) if isinstance(window, str) else None
    if match is None or float(match.group(1)) <= 0:
        return None
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class LineError:
    """Why the input file is invalid: the batch fails with these in `errors.data`."""

    line: int
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param,
                "line": self.line}


@dataclass(frozen=True)
class Rejected:
    """A well-formed line the batch cannot run (wrong url, method or body): it fails alone."""

    line: int
    custom_id: str
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A line that becomes Kiln rows."""

    line: int
    custom_id: str
    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def parse_line(raw: bytes, line: int, endpoint: str) -> LineError | Rejected | Accepted | None:
    """One input line (1-based `line`); None for a blank one."""
    if not raw.strip():
        return None
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LineError(line, "invalid_json_line", f"line {line} is not valid JSON: {exc}")
    if not isinstance(request, dict):
        return LineError(line, "invalid_json_line", f"line {line} is not a JSON object")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(line, "missing_required_parameter",
                         f"line {line} has no custom_id (a non-empty string)", "custom_id")
    if request.get("method") != "POST":
        return Rejected(line, custom_id, "invalid_method",
                        f"method must be POST, not {request.get('method')!r}", "method")
    if request.get("url") != endpoint:
        return Rejected(line, custom_id, "invalid_url",
                        f"url {request.get('url')!r} is not the batch's endpoint {endpoint}",
                        "url")
    return parse_body(request.get("body"), line, custom_id, endpoint)


def parse_body(body: Any, line: int, custom_id: str, endpoint: str) -> Rejected | Accepted:
    if not isinstance(body, dict):
        return Rejected(line, custom_id, "invalid_body", "body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Rejected(line, custom_id, "missing_required_parameter",
                        "body.model is required", "body.model")
    inputs = body.get("input")
    if endpoint == "/v1/embeddings":
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return Rejected(line, custom_id, "invalid_input",
                            "body.input must be a string or a non-empty list of strings",
                            "body.input")
        records = [{TEXT_FIELD: text} for text in texts]
    else:
        records = [inputs] if isinstance(inputs, dict) else inputs
        if not isinstance(records, list) or not records or not all(
                isinstance(r, dict) for r in records):
            return Rejected(line, custom_id, "invalid_input",
                            "body.input must be a record or a non-empty list of records",
                            "body.input")
    rows = [{**record, ROW_COLUMN: f"{line}:{k}", CUSTOM_ID_COLUMN: custom_id}
            for k, record in enumerate(records)]
    return Accepted(line, custom_id, model, rows)


def request_id(batch_id: str, line: int) -> str:
    return f"batch_req_{batch_id.replace('-', '')[:16]}{line:08d}"


def rejected_line(batch_id: str, rejected: Rejected) -> dict[str, Any]:
    """The error file's line for a request that was refused before it ran."""
    return {"id": request_id(batch_id, rejected.line), "custom_id": rejected.custom_id,
            "response": {"status_code": 400, "request_id": request_id(batch_id, rejected.line),
                         "body": {"error": {"message": rejected.message,
                                            "type": "invalid_request_error",
                                            "param": rejected.param, "code": rejected.code}}},
            "error": None}


def word_count(texts: list[str]) -> int:
    """Usage's token count: whitespace-separated words (the dialect reports no tokenizer's)."""
    return sum(len(text.split()) for text in texts)


def response_body(endpoint: str, model: str, rows: list[dict[str, Any]],
                  texts: list[str] | None = None) -> dict[str, Any]:
    """An output line's body from the line's scored Kiln rows (their `output`s, in order)."""
    if endpoint == "/v1/embeddings":
        tokens = word_count(texts or [])
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": k, "embedding": row["output"]["embedding"]}
                         for k, row in enumerate(rows)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return {"object": "list", "model": model,
            "data": [{"object": "prediction", "index": k, "output": row["output"]}
                     for k, row in enumerate(rows)]}


def joined_line(batch_id: str, line: int, custom_id: str, endpoint: str, model: str,
                rows: list[dict[str, Any] | None], texts: list[str],
                final_status: str) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the dialect line) for one input line from its Kiln rows (None: not run)."""
    ident = request_id(batch_id, line)
    failed = next((row for row in rows if row is not None and "output" not in row), None)
    if failed is not None:
        body = {"error": {"message": failed.get("error_message", ""),
                          "type": "invalid_request_error", "param": None,
                          "code": failed.get("error_code")}}
        return False, {"id": ident, "custom_id": custom_id,
                       "response": {"status_code": 400, "request_id": ident, "body": body},
                       "error": None}
    if any(row is None for row in rows):
        code, message = UNFINISHED.get(final_status, ("batch_failed", "this request did not run"))
        return False, {"id": ident, "custom_id": custom_id, "response": None,
                       "error": {"code": code, "message": message}}
    body = response_body(endpoint, model, rows, texts)
    return True, {"id": ident, "custom_id": custom_id,
                  "response": {"status_code": 200, "request_id": ident, "body": body},
                  "error": None}
