"""Result and error rows of file jobs: chunk parts while running, one file per kind at the end.

Workers write each finished chunk's rows as parts in storage: Arrow IPC streams (`.arrow`) where
the rows were built column by column, JSONL otherwise; the finalizer joins them in chunk order
into the job's output and error files in the output format; downloads convert to any format on
the fly. Every row carries `row_index`, the id column's value and kept columns.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.writers import open_writer
from app.orm import Job, JobChunk
from app.storage import JOINED, Storage

ROWS_PER_PIECE = 4096


def flatten_output(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """JSONL keeps `output` nested; tabular formats lift its fields to columns."""
    if fmt == "jsonl" or "output" not in row:
        return row
    flat = {k: v for k, v in row.items() if k != "output"}
    flat.update(row["output"])
    return flat


class ArrowPart:
    """A part written as an Arrow IPC stream: tables, or rows (dicts) in the same layout; the
    first write fixes the schema."""

    def __init__(self, sink: BinaryIO, csv_sink: BinaryIO | None = None):
        self.sink, self.writer, self.schema, self.csv_sink = sink, None, None, csv_sink

    def write(self, rows: pa.Table | list[dict[str, Any]]) -> int:
        if not isinstance(rows, pa.Table):
            if not rows:
                return 0
            rows = pa.Table.from_pylist(rows, schema=self.schema)
        if self.writer is None:  # a column with no value yet holds text when it has one
            self.schema = pa.schema([f if f.type != pa.null() else f.with_type(pa.string())
                                     for f in rows.schema])
            self.writer = pa.ipc.new_stream(self.sink, self.schema)
        rows = rows.cast(self.schema)
        self.writer.write_table(rows)
        if self.csv_sink is not None and rows.num_rows:
            pacsv.write_csv(flat_table(rows), self.csv_sink,
                            write_options=pacsv.WriteOptions(include_header=False))
        return rows.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.sink.close()
        if self.csv_sink is not None:
            self.csv_sink.close()


class JsonlPart:
    """A part written as JSONL, one row (dict) per line."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink

    def write(self, rows: list[dict[str, Any]]) -> int:
        self.sink.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        return len(rows)

    def close(self) -> None:
        self.sink.close()


def open_part(uri: str, with_csv: bool = False) -> ArrowPart | JsonlPart:
    """A part to write; an Arrow one `with_csv` also writes its rows, flat and without a
    header, as a CSV twin (`csv_twin`), so that a CSV output is joined by copying bytes."""
    sink = Storage.open_for_write(uri)
    if not is_arrow(uri):
        return JsonlPart(sink)
    return ArrowPart(sink, Storage.open_for_write(csv_twin(uri)) if with_csv else None)


def is_arrow(uri: str) -> bool:
    return uri.endswith(".arrow")


def csv_twin(uri: str) -> str:
    return uri.removesuffix(".arrow") + ".csv"


def csv_pieces(uris: list[str]) -> tuple[bytes, list[str]] | None:
    """A CSV of Arrow parts that all have CSV twins of one schema, as its header and the twins
    to follow it as they are. None when some part has none (it is then converted)."""
    schemas = set()
    for uri in uris:
        if not is_arrow(uri) or not Storage.exists(csv_twin(uri)):
            return None
        with Storage.open(uri) as handle:
            schemas.add(pa.ipc.open_stream(handle).schema)
    if len(schemas) != 1:  # none (no parts), or parts that disagree
        return None
    header = io.BytesIO()
    pacsv.write_csv(flat_table(read_arrow(uris[0]).slice(0, 1)).slice(0, 0), header)
    return header.getvalue(), [csv_twin(uri) for uri in uris]


def joined_csv(uris: list[str]) -> Iterator[bytes] | None:
    """The bytes of `csv_pieces`, a piece at a time; None when the parts have no twins."""
    if (found := csv_pieces(uris)) is None:
        return None
    header, twins = found

    def pieces() -> Iterator[bytes]:
        yield header
        for twin in twins:
            yield from _read(twin)

    return pieces()


def read_arrow(uri: str) -> pa.Table:
    with Storage.open(uri) as handle:
        return pa.ipc.open_stream(handle).read_all()


def part_rows(uris: Iterable[str]) -> Iterator[list[dict[str, Any]]]:
    """Rows of parts, a piece at a time."""
    for uri in uris:
        if is_arrow(uri):
            for piece in read_arrow(uri).to_batches(ROWS_PER_PIECE):
                yield piece.to_pylist()
            continue
        with Storage.open(uri) as handle:
            piece = []
            for line in handle:
                piece.append(orjson.loads(line))
                if len(piece) == ROWS_PER_PIECE:
                    yield piece
                    piece = []
            if piece:
                yield piece


def encode_parts(fmt: str, uris: list[str]) -> Iterator[bytes]:
    """Parts already are JSONL in the output's row shape: copy them; convert for other formats
    a part at a time through Arrow (rows through Python only when Arrow cannot read a part)."""
    if fmt == "jsonl":
        for uri in uris:
            if is_arrow(uri):
                for piece in part_rows([uri]):
                    yield b"".join(orjson.dumps(row) + b"\n" for row in piece)
            else:
                yield from _read(uri)
        return
    copied = joined_csv(uris) if fmt == "csv" and uris else None
    if copied is not None:
        yield from copied
        return
    sink = io.BytesIO()
    writer = open_writer(fmt, sink)
    for uri in uris:
        try:
            writer.write_table(part_table(uri))
        except (pa.ArrowException, ValueError):
            for piece in part_rows([uri]):
                writer.write([flatten_output(row, fmt) for row in piece])
        if sink.tell():
            yield sink.getvalue()
            sink.seek(0)
            sink.truncate()
    writer.close()
    if sink.tell():
        yield sink.getvalue()


def part_table(uri: str) -> pa.Table:
    """A part as a flat table, laid out as `flatten` lays out a row: `output` lifted to columns,
    probabilities as prob_i, other nested values as JSON text."""
    if is_arrow(uri):
        return flat_table(read_arrow(uri))
    with Storage.open(uri) as handle:
        return flat_table(pajson.read_json(io.BytesIO(handle.read())))


def flat_table(table: pa.Table) -> pa.Table:
    """A table of rows as parts hold them, with `output` lifted to columns as `part_table`."""
    if "output" not in table.column_names:
        return table
    output = table.column("output")
    table = table.drop_columns(["output"])
    for field in output.type:
        column = pc.struct_field(output, field.name)
        if field.name == "probabilities" and pa.types.is_list(field.type):
            width = pc.max(pc.list_value_length(column)).as_py() or 0
            for i in range(width):
                table = table.append_column(f"prob_{i}", pc.list_element(column, i))
        elif pa.types.is_nested(field.type):
            text = [None if v is None else orjson.dumps(v).decode() for v in column.to_pylist()]
            table = table.append_column(field.name, pa.array(text, pa.string()))
        else:
            table = table.append_column(field.name, column)
    return table


def finished_parts(session: Session, job: Job, kind: str,
                   input_order: bool | None = None) -> list[str]:
    """URIs of finished chunks' parts: in input order once the job is done, else as finished."""
    column = JobChunk.output_uri if kind == "results" else JobChunk.error_uri
    if input_order is None:
        input_order = job.status != "running"
    order = (JobChunk.index,) if input_order else (JobChunk.finished_at, JobChunk.index)
    return list(session.scalars(
        select(column).where(JobChunk.job_id == job.id, JobChunk.status == "succeeded",
                             column.is_not(None)).order_by(*order)))


def stream_file_job(session: Session, job: Job, kind: str, fmt: str | None) -> tuple[Iterator[bytes], str]:
    """The bytes of a file job's results or errors in `fmt` (default: the job's output format):
    its joined file when stored in that format, else its parts converted."""
    from app.services.files import stored_output

    uri, out_fmt = stored_output(session, job, kind, fmt)
    if uri is not None:
        return _read(uri), out_fmt
    return converted_parts(session, job, kind, out_fmt), out_fmt


def converted_parts(session: Session, job: Job, kind: str, fmt: str) -> Iterator[bytes]:
    """A file job's finished parts of `kind`, in input order, encoded as `fmt`."""
    return encode_parts(fmt, finished_parts(session, job, kind))


def _read(uri: str) -> Iterator[bytes]:
    with Storage.open(uri) as handle:
        while piece := handle.read(1024 * 1024):
            yield piece


def write_joined(uri: str, fmt: str, parts: list[str],
                 checkpoint: Callable[[], None] | None = None) -> tuple[str, int, str]:
    """Join parts into one stored file; returns its (uri, bytes, sha256). A CSV of parts with
    CSV twins is stored by reference (`Storage.put_joined`, at `uri` + `JOINED`): its bytes are
    the twins' own, so nothing is copied. `checkpoint` is called between pieces and may raise to
    stop: the partial file is then removed."""
    found = csv_pieces(parts) if fmt == "csv" else None
    if found is not None:
        return (uri + JOINED, *Storage.put_joined(uri + JOINED, *found, checkpoint=checkpoint))
    digest, size = hashlib.sha256(), 0
    try:
        with Storage.open_for_write(uri) as out:
            for data in encode_parts(fmt, parts):
                if checkpoint is not None:
                    checkpoint()
                digest.update(data)
                size += len(data)
                out.write(data)
    except BaseException:
        Storage.remove(uri, missing_ok=False)
        raise
    return uri, size, digest.hexdigest()


def discard_parts(uris: Iterable[str]) -> None:
    """Remove parts no chunk row names (and their CSV twins), as retention would never see them."""
    for uri in uris:
        Storage.remove(uri)
        if is_arrow(uri):
            Storage.remove(csv_twin(uri))


def part_uri(base: str, job_id: uuid.UUID, index: int, attempt: int, kind: str,
             ext: str = "jsonl") -> str:
    return f"{base.rstrip('/')}/jobs/{job_id}/parts/{index:06d}.a{attempt}.{kind}.{ext}"
