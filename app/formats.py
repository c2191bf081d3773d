"""Tabular file formats: one reader interface and one writer interface, three small
implementations each (CSV and Parquet through pyarrow, JSONL through orjson).

Readers plan a file into row-range chunks in one streaming pass and then read any chunk on its
own, in batches, with bounded memory. Rows that cannot be parsed come back as row errors
instead of failing the chunk.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.errors import InvalidInput
from app.storage import Storage

FORMATS = ("csv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
              ".pq": "parquet"}
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson",
               "parquet": "application/vnd.apache.parquet"}


def detect_format(filename: str, explicit: str | None = None) -> tuple[str, str | None]:
    """(format, compression) from an explicit format or the file name, e.g. `x.csv.gz`."""
    name = filename.lower()
    compression = "gzip" if name.endswith(".gz") else None
    if compression:
        name = name[:-3]
    if explicit:
        fmt = explicit.lower().removesuffix(".gz")
        if explicit.lower().endswith(".gz"):
            compression = "gzip"
    else:
        fmt = next((f for ext, f in EXTENSIONS.items() if name.endswith(ext)), "")
    if fmt not in FORMATS:
        raise InvalidInput(f"cannot tell the format of {filename!r}: use a .csv, .jsonl or "
                           f".parquet name (optionally .gz) or send format=csv|jsonl|parquet")
    if fmt == "parquet" and compression:
        raise InvalidInput("Parquet files are compressed inside; upload them without .gz")
    return fmt, compression


@dataclass(frozen=True)
class RowError:
    row: int
    code: str
    message: str


@dataclass(frozen=True)
class ChunkPlan:
    """Rows [start_row, end_row) live in bytes [start_offset, end_offset) of the decoded file."""

    start_row: int
    end_row: int
    start_offset: int = 0
    end_offset: int = 0


@dataclass
class Batch:
    """Parsed rows of one batch: a table (CSV, Parquet) or records (JSONL), plus row errors."""

    rows: list[int]
    table: pa.Table | None = None
    records: list[dict[str, Any]] | None = None
    errors: list[RowError] = field(default_factory=list)

    def column(self, name: str) -> list[Any]:
        if self.table is not None:
            if name not in self.table.column_names:
                return [None] * len(self.rows)
            return self.table.column(name).to_pylist()
        return [record.get(name) for record in self.records or []]


def open_decoded(uri: str, compression: str | None) -> BinaryIO:
    return Storage.open(uri, "rb", compression=compression)


class Reader(ABC):
    """Reads one stored file."""

    def __init__(self, uri: str, compression: str | None = None):
        self.uri, self.compression = uri, compression

    @abstractmethod
    def columns(self) -> list[str]:
        """Column names (JSONL: the keys of the first object line)."""

    @abstractmethod
    def plan(self, chunk_rows: int,
             checkpoint: Callable[[], None] | None = None) -> list[ChunkPlan]:
        """Split the file into chunks of at most `chunk_rows` rows, in one streaming pass;
        `checkpoint` is called at each chunk boundary and may raise to stop the pass."""

    @abstractmethod
    def read(self, chunk: ChunkPlan, batch_rows: int,
             string_columns: tuple[str, ...] = ()) -> Iterator[Batch]:
        """The chunk's rows in batches of at most `batch_rows`."""


class LineReader(Reader):
    """Shared planning for line-oriented formats: byte offsets every `chunk_rows` lines."""

    header_lines = 0

    def plan(self, chunk_rows: int,
             checkpoint: Callable[[], None] | None = None) -> list[ChunkPlan]:
        plans: list[ChunkPlan] = []
        with open_decoded(self.uri, self.compression) as handle:
            offset = sum(len(handle.readline()) for _ in range(self.header_lines))
            start_row, start_offset, rows = 0, offset, 0
            for line in handle:
                offset += len(line)
                if not line.strip():
                    continue
                rows += 1
                if rows - start_row == chunk_rows:
                    if checkpoint is not None:
                        checkpoint()
                    plans.append(ChunkPlan(start_row, rows, start_offset, offset))
                    start_row, start_offset = rows, offset
            if rows > start_row:
                plans.append(ChunkPlan(start_row, rows, start_offset, offset))
        return plans

    def lines(self, chunk: ChunkPlan, batch_rows: int) -> Iterator[tuple[int, list[bytes]]]:
        """(first row, non-empty lines) per batch of the chunk."""
        with open_decoded(self.uri, self.compression) as handle:
            handle.seek(chunk.start_offset)
            remaining = chunk.end_offset - chunk.start_offset
            row, pending = chunk.start_row, []
            while remaining > 0:
                line = handle.readline()
                if not line:
                    break
                remaining -= len(line)
                if line.strip():
                    pending.append(line)
                    if len(pending) == batch_rows:
                        yield row, pending
                        row, pending = row + len(pending), []
            if pending:
                yield row, pending


class CsvReader(LineReader):
    header_lines = 1

    def header(self) -> bytes:
        with open_decoded(self.uri, self.compression) as handle:
            return handle.readline()

    def columns(self) -> list[str]:
        header = self.header()
        if not header.strip():
            raise InvalidInput("the CSV file is empty: it has no header row")
        return pacsv.read_csv(io.BytesIO(header)).column_names

    def read(self, chunk: ChunkPlan, batch_rows: int,
             string_columns: tuple[str, ...] = ()) -> Iterator[Batch]:
        header = self.header()
        names = self.columns()
        types = {name: pa.string() for name in string_columns if name in names}
        for first, lines in self.lines(chunk, batch_rows):
            bad: list[int] = []

            def skip(row) -> str:  # called by read_csv, within this iteration
                bad.append(row.number - 2)  # noqa: B023 - line 1 is the header; rows 0-based
                return "skip"

            try:
                table = pacsv.read_csv(
                    io.BytesIO(header + b"".join(lines)),
                    read_options=pacsv.ReadOptions(use_threads=False),
                    parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                    convert_options=pacsv.ConvertOptions(column_types=types,
                                                         strings_can_be_null=True))
            except pa.ArrowInvalid as exc:
                rows = list(range(first, first + len(lines)))
                yield Batch(rows=[], table=None, records=[],
                            errors=[RowError(r, "unparsable_row", str(exc)[:300]) for r in rows])
                continue
            skipped = set(bad)
            rows = [first + i for i in range(len(lines)) if i not in skipped]
            errors = [RowError(first + i, "unparsable_row",
                               f"row {first + i} does not have {len(names)} fields")
                      for i in sorted(skipped)]
            yield Batch(rows=rows, table=table, errors=errors)


class JsonlReader(LineReader):
    def columns(self) -> list[str]:
        with open_decoded(self.uri, self.compression) as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    first = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(first, dict):
                    return list(first)
        raise InvalidInput("the JSONL file holds no JSON object lines")

    def read(self, chunk: ChunkPlan, batch_rows: int,
             string_columns: tuple[str, ...] = ()) -> Iterator[Batch]:
        for first, lines in self.lines(chunk, batch_rows):
            rows, records, errors = [], [], []
            for i, line in enumerate(lines):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    errors.append(RowError(first + i, "unparsable_row", f"invalid JSON: {exc}"))
                    continue
                if not isinstance(record, dict):
                    errors.append(RowError(first + i, "not_an_object",
                                           f"row {first + i} is not a JSON object"))
                    continue
                rows.append(first + i)
                records.append(record)
            yield Batch(rows=rows, records=records, errors=errors)


class ParquetReader(Reader):
    def _file(self) -> pq.ParquetFile:
        return pq.ParquetFile(Storage.open(self.uri))

    def columns(self) -> list[str]:
        try:
            return self._file().schema_arrow.names
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"not a readable Parquet file: {exc}") from None

    def plan(self, chunk_rows: int,
             checkpoint: Callable[[], None] | None = None) -> list[ChunkPlan]:
        total = self._file().metadata.num_rows
        return [ChunkPlan(start, min(start + chunk_rows, total))
                for start in range(0, total, chunk_rows)]

    def read(self, chunk: ChunkPlan, batch_rows: int,
             string_columns: tuple[str, ...] = ()) -> Iterator[Batch]:
        row = 0
        for record_batch in self._file().iter_batches(batch_size=batch_rows):
            end = row + record_batch.num_rows
            if end > chunk.start_row and row < chunk.end_row:
                lo, hi = max(chunk.start_row - row, 0), min(chunk.end_row, end) - row
                table = pa.Table.from_batches([record_batch.slice(lo, hi - lo)])
                yield Batch(rows=list(range(row + lo, row + hi)), table=table)
            if end >= chunk.end_row:
                return
            row = end


READERS: dict[str, type[Reader]] = {"csv": CsvReader, "jsonl": JsonlReader,
                                    "parquet": ParquetReader}


def open_reader(fmt: str, uri: str, compression: str | None = None) -> Reader:
    return READERS[fmt](uri, compression)


# ---------------------------------------------------------------- writers

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
