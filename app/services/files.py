"""Uploaded input files and produced output files, tenant-scoped and streamed to storage."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from app.domain.formats import detect_format
from app.orm import File, Job, Tenant
from app.services import audit
from app.services.auth import Caller, get_owned
from app.services.paging import Page, keyset_page
from app.storage import Storage
from app.store import jobs as job_store

COPY_BYTES = 1024 * 1024


def upload_file(session: Session, caller: Caller, storage: Storage, stream: BinaryIO, *,
                filename: str, purpose: str = "input", fmt: str | None = None,
                max_bytes: int, expires_after_seconds: float | None = None,
                default_retention_seconds: float = 0.0) -> File:
    """Copy an upload to storage in 1 MiB pieces, hashing as it goes; nothing partial survives."""
    file_format, compression = detect_format(filename, fmt)
    file_id = uuid.uuid4()
    uri = storage.uri(f"files/{caller.tenant_id}/{file_id}")
    try:
        if (adopted := storage.adopt(stream, uri)) is not None:  # spooled in place: a rename
            size, sha256 = adopted
            if size > max_bytes:
                raise PayloadTooLarge(f"the file is larger than {max_bytes} bytes "
                                      "(KILN_MAX_UPLOAD_BYTES)")
        else:
            size, sha256 = copy_upload(stream, storage, uri, max_bytes)
    except BaseException:
        storage.remove(uri)
        raise
    record = File(id=file_id, tenant_id=caller.tenant_id, purpose=purpose, filename=filename,
                  format=file_format, compression=compression, bytes=size,
                  sha256=sha256, uri=uri,
                  expires_at=file_expiry(session, caller, expires_after_seconds,
                                         default_retention_seconds))
    session.add(record)
    session.flush()
    audit.record_for(session, caller, "file.upload", "file", record.id, filename=filename[:200],
                     bytes=size, purpose=purpose)
    return record


def copy_upload(stream: BinaryIO, storage: Storage, uri: str, max_bytes: int) -> tuple[int, str]:
    """Copy an upload to storage in 1 MiB pieces, hashing as it goes: its size and SHA-256."""
    digest, size = hashlib.sha256(), 0
    with storage.open_for_write(uri) as out:
        while piece := stream.read(COPY_BYTES):
            size += len(piece)
            if size > max_bytes:
                raise PayloadTooLarge(f"the file is larger than {max_bytes} bytes "
                                      "(KILN_MAX_UPLOAD_BYTES)")
            digest.update(piece)
            out.write(piece)
    return size, digest.hexdigest()


def file_expiry(session: Session, caller: Caller, seconds: float | None,
                default_seconds: float) -> datetime | None:
    """When an upload expires: after the upload's own seconds, else the tenant's default, else
    KILN_FILE_RETENTION_SECONDS (`default_seconds`); 0 keeps it."""
    if seconds is None:
        seconds = session.scalar(select(Tenant.file_retention_seconds)
                                 .where(Tenant.id == caller.tenant_id))
    if seconds is None:
        seconds = default_seconds
    return datetime.now(UTC) + timedelta(seconds=seconds) if seconds else None


def record_output_file(session: Session, tenant_id: uuid.UUID, *, uri: str, filename: str,
                       fmt: str, purpose: str, size: int, sha256: str, rows: int) -> File:
    record = File(tenant_id=tenant_id, purpose=purpose, filename=filename, format=fmt,
                  bytes=size, sha256=sha256, uri=uri, row_count=rows)
    session.add(record)
    session.flush()
    return record


def get_file(session: Session, caller: Caller, file_id: str) -> File:
    """The caller's file; one past `expires_at` is gone (the sweeper deletes it soon)."""
    record = get_owned(session, caller, File, file_id, "file")
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        raise NotFound(f"file {file_id} expired at {record.expires_at.isoformat()}")
    return record


def list_files(session: Session, caller: Caller, *, purpose: str | None, limit: int,
               after: str | None) -> Page[File]:
    """Newest first: the files after the file `after`."""
    query = select(File).where(File.tenant_id == caller.tenant_id)
    if purpose:
        query = query.where(File.purpose == purpose)
    return keyset_page(session, caller, File, query, after=after, limit=limit, what="file",
                       newest_first=True)


def delete_file(session: Session, caller: Caller, file_id: str) -> None:
    found = get_file(session, caller, file_id)
    in_use = session.scalar(select(Job.id).where(
        Job.tenant_id == caller.tenant_id, Job.input_file_id == found.id,
        Job.status.in_(("validating", "queued", "running", "finalizing", "cancelling"))).limit(1))
    if in_use is not None:
        raise Conflict(f"file {file_id} is the input of unfinished job {in_use}")
    uri = found.uri
    job_store.forget_file(session, found.id)
    session.delete(found)
    session.flush()
    audit.record_for(session, caller, "file.delete", "file", found.id)
    remove_stored(uri)


def remove_stored(uri: str) -> None:
    """Delete a file's bytes from storage, if they are there."""
    Storage.remove(uri)


def stored_output(session: Session, job: Job, kind: str, fmt: str | None) -> tuple[str | None, str]:
    """The uri of a file job's joined `kind` file ("results" or "errors") when it is stored in
    `fmt` (default: the job's output format), else None; and that format. Serving it needs no
    pyarrow, so an API process that only serves such downloads never loads it."""
    out_fmt = fmt or job.options.get("output_format", "jsonl")
    file_id = job.output_file_id if kind == "results" else job.error_file_id
    stored = session.get(File, file_id) if file_id is not None else None
    return (stored.uri if stored is not None and stored.format == out_fmt else None), out_fmt


def iter_content(uri: str, piece_bytes: int = COPY_BYTES) -> Iterator[bytes]:
    with Storage.open(uri) as handle:
        while piece := handle.read(piece_bytes):
            yield piece


def required_columns(signature: dict[str, Any]) -> list[str]:
    if signature.get("kind") == "text":
        return [signature.get("text_field", "text")]
    return list(signature.get("columns", []))


def check_columns(columns: list[str], signature: dict[str, Any],
                  options: dict[str, Any]) -> str | None:
    """Raise when the file lacks a column the model or the job needs; returns the id column."""
    id_column = options.get("id_column") or ("custom_id" if "custom_id" in columns else None)
    wanted = required_columns(signature) + ([id_column] if id_column else []) + \
        list(options.get("keep_columns") or [])
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise InvalidInput(f"the input file lacks column(s) {missing}; it has {columns[:20]}")
    return id_column
