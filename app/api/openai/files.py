"""`/openai/v1/files`: Kiln's uploads as the client's FileObjects."""

from __future__ import annotations

from flask import request, stream_with_context
from sqlalchemy import select

from app.api.context import caller, context, db
from app.api.openai.presenters import file_object, page
from app.api.responses import Response, json_response
from app.errors import BadRequest
from app.orm import File
from app.services import files
from app.services.openai_batches import ROWS_PURPOSE

PURPOSES = ("batch", "batch_output", "user_data", "fine-tune", "assistants", "vision", "evals")


def create_file() -> Response:
    """Multipart `file` and `purpose`; `expires_after[seconds]` sets the file's retention."""
    upload = request.files.get("file")
    purpose = request.form.get("purpose", "")
    if upload is None:
        raise BadRequest("file: expected a file upload (a multipart part named file)")
    if purpose not in PURPOSES:
        raise BadRequest(f"purpose must be one of {list(PURPOSES)}, not {purpose!r}")
    seconds = request.form.get("expires_after[seconds]")
    try:
        expires = float(seconds) if seconds is not None else None
    except ValueError:
        raise BadRequest("expires_after[seconds] must be a number of seconds") from None
    ctx, session, who = context(), db(), caller()
    ctx.admission.precheck_upload(session, who)
    filename = upload.filename or "upload.jsonl"
    fmt = "jsonl" if purpose == "batch" else None
    record = files.upload_file(session, who, ctx.storage, upload.stream, filename=filename,
                               purpose=purpose, fmt=fmt, max_bytes=ctx.settings.max_upload_bytes,
                               expires_after_seconds=expires,
                               default_retention_seconds=ctx.settings.file_retention_seconds)
    ctx.admission.admit_upload(session, who, record)
    return json_response(file_object(record))


def list_files() -> Response:
    """Newest first by default (`order=asc` for oldest first), `after` an id of the last page."""
    who, session = caller(), db()
    limit = bounded_limit(request.args.get("limit"), 10_000)
    ascending = request.args.get("order", "desc") == "asc"
    query = select(File).where(File.tenant_id == who.tenant_id, File.purpose != ROWS_PURPOSE)
    if purpose := request.args.get("purpose"):
        query = query.where(File.purpose == purpose)
    key = (File.created_at, File.id)
    if after := request.args.get("after"):
        anchor = files.get_file(session, who, after)
        anchor_key = (anchor.created_at, anchor.id)
        query = query.where(key > anchor_key if ascending else key < anchor_key)
    order = (File.created_at.asc(), File.id.asc()) if ascending else (File.created_at.desc(),
                                                                     File.id.desc())
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return json_response(page([file_object(r) for r in rows[:limit]], len(rows) > limit))


def bounded_limit(raw: str | None, maximum: int) -> int:
    try:
        limit = int(raw) if raw is not None else 20
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}")
    return limit


def retrieve_file(file_id: str) -> Response:
    return json_response(file_object(files.get_file(db(), caller(), file_id)))


def delete_file(file_id: str) -> Response:
    files.delete_file(db(), caller(), file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def file_content(file_id: str) -> Response:
    """The bytes as stored (any Accept, `application/binary` included)."""
    record = files.get_file(db(), caller(), file_id)
    return Response(stream_with_context(files.iter_content(record.uri)),
                    mimetype="application/octet-stream",
                    headers={"Content-Length": str(record.bytes),
                             "Content-Disposition": f'attachment; filename="{record.filename}"'})
