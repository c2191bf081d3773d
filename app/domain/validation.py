"""Check inline records against a tabular model signature before a job is accepted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordError:
    """Why one record cannot be scored."""

    index: int
    field: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "code": self.code, "message": self.message}


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_record(index: int, record: Any, columns: Sequence[str]) -> RecordError | None:
    """Return the first problem with one record, or None when every column holds a finite number."""
    if not isinstance(record, dict):
        return RecordError(index, None, "not_an_object", f"record {index} must be a JSON object")
    isfinite = math.isfinite
    for column in columns:  # the submit hot path: plain floats and ints pass without a call
        value = record.get(column)
        kind = type(value)
        if not ((kind is float or kind is int) and isfinite(value)):
            break
    else:
        return None
    for column in columns:
        if column not in record:
            return RecordError(index, column, "missing_field",
                               f"record {index} is missing field {column!r}")
        if not is_number(record[column]):
            return RecordError(index, column, "not_numeric",
                               f"record {index} field {column!r} must be a finite number, "
                               f"got {record[column]!r}")
    return None


def check_text_record(index: int, record: Any, field: str = "text") -> RecordError | None:
    """A text model's record: an object whose `field` is a string."""
    if not isinstance(record, dict):
        return RecordError(index, None, "not_an_object", f"record {index} must be a JSON object")
    if field not in record:
        return RecordError(index, field, "missing_field", f"record {index} is missing field {field!r}")
    if not isinstance(record[field], str):
        return RecordError(index, field, "not_a_string",
                           f"record {index} field {field!r} must be a string")
    return None


def record_checker(signature: dict[str, Any]):
    """The check for one record of a model with this signature."""
    if signature.get("kind") == "text":
        field = signature.get("text_field", "text")
        return lambda index, record: check_text_record(index, record, field)
    columns = list(signature.get("columns", []))
    return lambda index, record: check_record(index, record, columns)


def check_records(records: Sequence[Any], signature: dict[str, Any],
                  limit: int = 20) -> list[RecordError]:
    """The first `limit` record problems, in index order."""
    check = record_checker(signature)
    errors: list[RecordError] = []
    for index, record in enumerate(records):
        error = check(index, record)
        if error is not None:
            errors.append(error)
            if len(errors) >= limit:
                break
    return errors
