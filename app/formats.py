"""Tabular file formats: one reader interface, three small implementations (CSV and Parquet
through pyarrow, JSONL through orjson); the writers are in app/writers.py.

Readers plan a file into row-range chunks in one streaming pass and then read any chunk on its
own, in batches, with bounded memory. Rows that cannot be parsed come back as row errors
instead of failing the chunk.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.domain.formats import EXTENSIONS, FORMATS, MEDIA_TYPES, detect_format  # noqa: F401
from app.errors import InvalidInput
from app.storage import Storage

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

    def plan(self, chunk_rows: int, checkpoint: Callable[[], None] | None = None,
             stage: BinaryIO | None = None) -> list[ChunkPlan]:
        """Also copies the decoded bytes to `stage` when given: a compressed file's staging
        copy, which its chunks then read at their offsets instead of decompressing again."""
        plans: list[ChunkPlan] = []
        with open_decoded(self.uri, self.compression) as handle:
            head = b"".join(handle.readline() for _ in range(self.header_lines))
            ends, start_row, start_offset = LineEnds(len(head)), 0, len(head)
            block, final = head, False
            while not final:
                if stage is not None:
                    stage.write(block)
                block = handle.read(BLOCK_BYTES)
                final = not block
                found, first = ends.feed(block, final), ends.rows
                ends.rows += len(found)
                while ends.rows - start_row >= chunk_rows:
                    if checkpoint is not None:
                        checkpoint()
                    end = int(found[start_row + chunk_rows - first - 1])
                    plans.append(ChunkPlan(start_row, start_row + chunk_rows, start_offset, end))
                    start_row, start_offset = start_row + chunk_rows, end
            if ends.rows > start_row:
                plans.append(ChunkPlan(start_row, ends.rows, start_offset, ends.offset))
        return plans

    def chunk_bytes(self, chunk: ChunkPlan) -> bytes:
        with open_decoded(self.uri, self.compression) as handle:
            handle.seek(chunk.start_offset)
            return handle.read(chunk.end_offset - chunk.start_offset)

    def lines(self, chunk: ChunkPlan, batch_rows: int) -> Iterator[tuple[int, list[bytes]]]:
        """(first row, non-empty lines without their line feed) per batch of the chunk."""
        lines = [line for line in self.chunk_bytes(chunk).split(b"\n") if line.strip()]
        for start in range(0, len(lines), batch_rows):
            yield chunk.start_row + start, lines[start:start + batch_rows]

    def blocks(self, chunk: ChunkPlan, batch_rows: int) -> Iterator[tuple[int, int, bytes]]:
        """(first row, rows, their bytes) per batch; sliced straight out of the chunk's bytes
        when it has no blank line (no Python per row), else joined from `lines`."""
        data = self.chunk_bytes(chunk)
        feeds = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
        if len(feeds) == chunk.end_row - chunk.start_row and (not len(feeds)
                                                                or feeds[-1] == len(data)):
            cuts = [0, *feeds[batch_rows - 1::batch_rows].tolist()]
            cuts += [] if cuts[-1] == len(data) else [len(data)]
            for i, (lo, hi) in enumerate(pairwise(cuts)):
                rows = min(batch_rows, chunk.end_row - chunk.start_row - i * batch_rows)
                yield chunk.start_row + i * batch_rows, rows, data[lo:hi]
            return
        del data, feeds
        for first, lines in self.lines(chunk, batch_rows):
            yield first, len(lines), b"\n".join(lines) + b"\n"


BLOCK_BYTES = 1 << 22
WHITESPACE = np.zeros(256, dtype=bool)
WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


class LineEnds:
    """End offsets of the non-blank lines of a stream fed block by block, found with numpy:
    a Python loop over a million lines costs more than parsing them."""

    def __init__(self, offset: int):
        self.offset, self.rows, self.tail = offset, 0, b""  # tail: an unfinished line

    def feed(self, block: bytes, final: bool = False) -> np.ndarray:
        data = self.tail + block
        codes = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(codes == 10) + 1
        cut = len(data) if final else (int(ends[-1]) if len(ends) else 0)
        if final and cut and (not len(ends) or ends[-1] < cut):
            ends = np.append(ends, cut)
        starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
        filled = np.ones(len(ends), dtype=bool)  # a line whose first byte is no space has text
        for i in np.flatnonzero(WHITESPACE[codes[starts]]) if len(ends) else ():
            filled[i] = bool(data[starts[i]:ends[i]].strip())
        base, self.tail = self.offset, data[cut:]
        self.offset = base + cut
        return ends[filled] + base


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
        for first, count, data in self.blocks(chunk, batch_rows):
            bad: list[int] = []

            def skip(row) -> str:  # called by read_csv, within this iteration
                bad.append(row.number - 2)  # noqa: B023 - line 1 is the header; rows 0-based
                return "skip"

            try:
                table = pacsv.read_csv(
                    io.BytesIO(header + data),
                    read_options=pacsv.ReadOptions(use_threads=False),
                    parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                    convert_options=pacsv.ConvertOptions(column_types=types,
                                                         strings_can_be_null=True))
            except pa.ArrowInvalid as exc:
                yield Batch(rows=[], table=None, records=[],
                            errors=[RowError(r, "unparsable_row", str(exc)[:300])
                                    for r in range(first, first + count)])
                continue
            skipped = set(bad)
            rows = [first + i for i in range(count) if i not in skipped] if skipped else list(
                range(first, first + count))
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
