"""Turn one parsed batch of a file into output rows and error rows.

Bad rows fail alone: a missing or non-numeric value, or an unparsable line, becomes an error row;
a row that makes the model raise is isolated by bisection; the rest of the batch is scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.domain.batching import run_isolated
from app.domain.validation import record_checker
from app.errors import describe_error
from app.formats import Batch, RowError


@dataclass(frozen=True)
class RowContext:
    """How output rows are tagged: the id column (if any) and the kept input columns."""

    id_column: str | None
    keep_columns: tuple[str, ...]


def float_column(column: pa.ChunkedArray) -> tuple[np.ndarray, dict[int, str]]:
    """A float64 array and, for the rows that are missing or not a finite number, why."""
    try:
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        values[pc.is_null(column).to_numpy(zero_copy_only=False)] = np.nan
        bad = np.flatnonzero(~np.isfinite(values))
        return values, {int(i): "missing or not finite" for i in bad}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values, reasons = [], {}
        for i, raw in enumerate(column.to_pylist()):
            try:
                number = float(raw)
                ok = math.isfinite(number) and not isinstance(raw, bool)
            except (TypeError, ValueError):
                number, ok = math.nan, False
            values.append(number)
            if not ok:
                reasons[i] = f"not a number: {raw!r}"
        return np.array(values, dtype=np.float64), reasons


def tabular_features(batch: Batch, columns: Sequence[str]) -> tuple[np.ndarray, list[RowError]]:
    """The feature matrix of a table batch, and the rows whose values cannot be used.

    Numeric columns without nulls (what a clean file parses to) are copied as they are and
    checked for non-finite values once for the whole matrix; only other columns go value by
    value through `float_column`, which says why a value is unusable.
    """
    matrix = np.empty((len(batch.rows), len(columns)), dtype=np.float32)
    reasons: dict[tuple[int, int], str] = {}
    present = set(batch.table.column_names)  # a fresh list on every access: read it once
    for j, name in enumerate(columns):
        if name not in present:
            raise KeyError(name)
        column = batch.table.column(name)
        kind = column.type
        if column.null_count == 0 and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            matrix[:, j] = column.to_numpy()
        else:
            values, why = float_column(column)
            matrix[:, j] = values
            reasons.update(((i, j), reason) for i, reason in why.items())
    errors = []
    for i in np.flatnonzero(~np.isfinite(matrix).all(axis=1)):
        j = int(np.flatnonzero(~np.isfinite(matrix[i]))[0])
        reason = reasons.get((int(i), j), "missing or not finite")
        errors.append(RowError(batch.rows[i], "invalid_value",
                               f"row {batch.rows[i]} field {columns[j]!r}: {reason}"))
    return matrix, errors


def score_batch(batch: Batch, model: Any, signature: dict[str, Any],
                context: RowContext) -> tuple[list[dict], list[dict]]:
    """Output rows and error rows for one batch, each tagged with its row index and id."""
    tags = row_tags(batch, context)
    errors = [error_row(tags.get(e.row, {"row_index": e.row}), e.code, e.message)
              for e in batch.errors]
    positions = list(range(len(batch.rows)))
    if batch.table is not None and hasattr(model, "run_features"):
        matrix, bad = tabular_features(batch, signature["columns"])
        bad_rows = {e.row for e in bad}
        errors += [error_row(tags[e.row], e.code, e.message) for e in bad]
        good = [i for i in positions if batch.rows[i] not in bad_rows]
        outputs = run_isolated(good, lambda items: model.run_features(matrix[list(items)]),
                               model_error)
    else:
        records = batch.records if batch.records is not None else batch.table.to_pylist()
        check = record_checker(signature)
        good = []
        for i in positions:
            problem = check(batch.rows[i], records[i])
            if problem is None:
                good.append(i)
            else:
                errors.append(error_row(tags[batch.rows[i]], problem.code, problem.message))
        outputs = run_isolated(good, lambda items: model.run([records[i] for i in items]),
                               model_error)
    results = []
    for i, output in zip(good, outputs):
        tag = tags[batch.rows[i]]
        if "__error__" in output:
            errors.append(error_row(tag, "inference_error", output["__error__"]))
        else:
            results.append({**tag, "output": output})
    results.sort(key=lambda r: r["row_index"])
    errors.sort(key=lambda r: r["row_index"])
    return results, errors


def model_error(_item: Any, exc: Exception) -> dict[str, str]:
    return {"__error__": describe_error(exc)}


def row_tags(batch: Batch, context: RowContext) -> dict[int, dict[str, Any]]:
    """Per row index: the row index, the id column's value and the kept columns."""
    tags = {row: {"row_index": row} for row in batch.rows}
    names = ([context.id_column] if context.id_column else []) + list(context.keep_columns)
    for name in names:
        for row, value in zip(batch.rows, batch.column(name)):
            tags[row][name] = value
    return tags


def error_row(tag: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    return {**tag, "error_code": code, "error_message": message}


def run_arrays_batched(model: Any, matrix: np.ndarray,
                       batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The model over `matrix` in calls of at most `batch_rows` rows (the model's batch size:
    what a GPU's memory or a fixed batch dimension allows), as one pair of arrays."""
    if len(matrix) <= batch_rows:
        return model.run_arrays(matrix)
    parts = [model.run_arrays(matrix[at:at + batch_rows])
             for at in range(0, len(matrix), batch_rows)]
    return (np.concatenate([labels for labels, _ in parts]),
            np.concatenate([probabilities for _, probabilities in parts]))


def score_columns(batch: Batch, model: Any, signature: dict[str, Any],
                  context: RowContext, batch_rows: int) -> tuple[pa.Table, list[dict]] | None:
    """`score_batch` column by column for a table batch of a tabular model: the output rows as
    one Arrow table (row_index, the id column, `output` {label, probabilities}) with no Python
    object per row. None when this path does not apply or the model raised on the batch: the
    row path then isolates the rows that fail."""
    if batch.table is None or context.keep_columns or not hasattr(model, "run_arrays"):
        return None
    matrix, bad = tabular_features(batch, signature["columns"])
    rows = np.asarray(batch.rows, dtype=np.int64)
    keep = np.ones(len(rows), dtype=bool)
    keep[np.searchsorted(rows, [e.row for e in bad])] = False
    picked = np.flatnonzero(keep)
    try:
        labels, probabilities = run_arrays_batched(
            model, matrix[picked] if len(bad) else matrix, batch_rows)
    except Exception:  # noqa: BLE001 - the row path finds and reports the rows that fail
        return None
    if probabilities.ndim != 2 or len(labels) != len(picked):
        return None
    width = probabilities.shape[1]
    offsets = pa.array(np.arange(0, len(picked) * width + 1, width, dtype=np.int32))
    output = pa.StructArray.from_arrays(
        [pa.array(labels), pa.ListArray.from_arrays(offsets, pa.array(probabilities.ravel()))],
        names=["label", "probabilities"])
    columns = {"row_index": pa.array(rows[picked])}
    if context.id_column:
        ids = (batch.table.column(context.id_column) if context.id_column
               in batch.table.column_names else pa.nulls(len(rows), pa.string()))
        columns[context.id_column] = ids.take(pa.array(picked)) if len(bad) else ids
    tags = {e.row: {"row_index": e.row} for e in [*batch.errors, *bad]}
    if context.id_column and tags:
        where = np.searchsorted(rows, [e.row for e in bad])
        for error, value in zip(bad, columns_value(batch, context.id_column, where)):
            tags[error.row][context.id_column] = value
    errors = [error_row(tags[e.row], e.code, e.message) for e in [*batch.errors, *bad]]
    errors.sort(key=lambda r: r["row_index"])
    return pa.table({**columns, "output": output}), errors


def columns_value(batch: Batch, name: str, positions: np.ndarray) -> list[Any]:
    if name not in batch.table.column_names:
        return [None] * len(positions)
    return batch.table.column(name).take(pa.array(positions, pa.int64())).to_pylist()
