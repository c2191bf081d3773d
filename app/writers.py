"""Tabular writers: rows (dicts) or Arrow tables to CSV, JSONL or Parquet on a binary sink."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.errors import InvalidInput


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """Nested outputs as flat columns: probabilities → prob_i, other lists and dicts as JSON."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key == "probabilities" and isinstance(value, list):
            flat.update({f"prob_{i}": p for i, p in enumerate(value)})
        elif isinstance(value, (list, dict)):
            flat[key] = orjson.dumps(value).decode()
        else:
            flat[key] = value
    return flat


class Writer(ABC):
    """Writes rows (dicts) to a binary sink in one format."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink

    @abstractmethod
    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional: most formats have no footer
        """Finish the format (footers); the sink stays open."""


class JsonlWriter(Writer):
    def write(self, rows: list[dict[str, Any]]) -> None:
        self.sink.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))


class ArrowWriter(Writer):
    """Shared schema handling for CSV and Parquet: the first batch fixes the columns."""

    schema: pa.Schema | None = None

    def table(self, rows: list[dict[str, Any]]) -> pa.Table:
        flat = [flatten(row) for row in rows]
        if self.schema is None:
            names: dict[str, None] = {}
            for row in flat:
                names.update(dict.fromkeys(row))
            table = pa.Table.from_pylist(flat)
            fields = [table.schema.field(n) if table.schema.field(n).type != pa.null()
                      else pa.field(n, pa.string()) for n in names]
            self.schema = pa.schema(fields)
            self.open(self.schema)
        return pa.Table.from_pylist(flat, schema=self.schema)

    def open(self, schema: pa.Schema) -> None: ...

    def write_table(self, table: pa.Table) -> None:
        """Write a table with the columns of the first write (null-typed ones as strings)."""
        if table.num_rows == 0:
            return
        if self.schema is None:
            self.schema = pa.schema([f if f.type != pa.null() else pa.field(f.name, pa.string())
                                     for f in table.schema])
            self.open(self.schema)
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))


class CsvWriter(ArrowWriter):
    _writer: pacsv.CSVWriter | None = None

    def open(self, schema: pa.Schema) -> None:
        self._writer = pacsv.CSVWriter(self.sink, schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            table = self.table(rows)  # the first call opens the writer with its schema
            self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class ParquetWriter(ArrowWriter):
    _writer: pq.ParquetWriter | None = None

    def open(self, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(self.sink, schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            table = self.table(rows)
            self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


WRITERS: dict[str, type[Writer]] = {"csv": CsvWriter, "jsonl": JsonlWriter,
                                    "parquet": ParquetWriter}


def open_writer(fmt: str, sink: BinaryIO) -> Writer:
    if fmt not in WRITERS:
        raise InvalidInput(f"unknown format {fmt!r}: choose csv, jsonl or parquet")
    return WRITERS[fmt](sink)
