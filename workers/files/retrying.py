"""A retry job's input: the rows its parent failed, copied into a new file of the same format."""

from __future__ import annotations

import hashlib
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from app.formats import CsvReader, LineReader, open_reader
from app.orm import File, Job
from app.services.outputs import finished_parts, part_rows
from app.storage import Storage
from workers.context import WorkerContext


def extract_failed_rows(context: WorkerContext, job_id: uuid.UUID, parent_id: uuid.UUID,
                        source: File, checkpoint) -> File:
    """Copy the rows the parent job failed into a new input file of the same format."""
    with context.sessions() as session:
        parent = session.get(Job, parent_id)
        error_parts = finished_parts(session, parent, "errors", input_order=True)
    wanted = {row["row_index"] for piece in part_rows(error_parts) for row in piece}
    reader = open_reader(source.format, source.uri, source.compression)
    uri = f"{context.settings.resolved_storage_url.rstrip('/')}/files/{source.tenant_id}/retry-{job_id}"
    rows = 0
    with Storage.open_for_write(uri) as out:
        if isinstance(reader, LineReader):
            if isinstance(reader, CsvReader):
                out.write(reader.header())
            for plan in reader.plan(context.settings.tuning.chunk_rows, checkpoint=checkpoint):
                checkpoint()
                for first, lines in reader.lines(plan, 4096):
                    picked = [line for i, line in enumerate(lines) if first + i in wanted]
                    out.write(b"".join(line + b"\n" for line in picked))
                    rows += len(picked)
        else:
            writer = None
            for plan in reader.plan(context.settings.tuning.chunk_rows, checkpoint=checkpoint):
                checkpoint()
                for batch in reader.read(plan, 4096):
                    keep = [i for i, row in enumerate(batch.rows) if row in wanted]
                    if not keep:
                        continue
                    table = batch.table.take(pa.array(keep))
                    writer = writer or pq.ParquetWriter(out, table.schema)
                    writer.write_table(table)
                    rows += len(keep)
            if writer is not None:
                writer.close()
    digest = hashlib.sha256()
    with Storage.open(uri) as written:
        while piece := written.read(1 << 20):
            digest.update(piece)
    with context.sessions.begin() as session:
        record = File(tenant_id=source.tenant_id, purpose="retry_input",
                      filename=f"retry-of-{parent_id}.{source.format}", format=source.format,
                      compression=None, bytes=Storage.size(uri), sha256=digest.hexdigest(), uri=uri,
                      row_count=rows)
        session.add(record)
        session.flush()
        session.expunge(record)
    return record
