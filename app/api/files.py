"""HTTP entry points for files: streamed uploads and downloads, tenant-scoped."""

from __future__ import annotations

from flask import request, stream_with_context
from flask_openapi3 import APIBlueprint, Tag

from app.api.context import caller, context, db
from app.api.spec import operation_id
from app.api.responses import Response, json_response
from app.api.schemas import FileList, FileOut, FilePath, FileQuery, Problem, UploadForm
from app.errors import InvalidInput
from app.domain.formats import MEDIA_TYPES
from app import presenters
from app.services import files

tag = Tag(name="files", description="Upload input files for bulk scoring; download outputs.")
api = APIBlueprint("files", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}], operation_id_callback=operation_id)
# What is particular to each route; `app.api.spec` adds what every route of its kind answers.


def allow_large_uploads() -> None:
    """Uploads may be far larger than JSON bodies; the service enforces the exact limit."""
    if request.path == "/v1/files" and request.method == "POST":
        request.max_content_length = context().settings.max_upload_bytes + 1024 * 1024


@api.post("/files", responses={201: FileOut, 429: Problem})
def upload_file(form: UploadForm) -> Response:
    """Upload a CSV, JSONL or Parquet file (gzip for CSV and JSONL) as multipart field `file`."""
    if not hasattr(form.file, "stream"):  # a part named `file` sent without a file name
        raise InvalidInput("file: expected a file upload (a multipart part with a filename)",
                           errors=[{"field": "file", "message": "not a file",
                                    "code": "not_a_file"}])
    ctx, session, who = context(), db(), caller()
    ctx.admission.precheck_upload(session, who)  # 429 before reading the bytes of a full tenant
    record = files.upload_file(session, who, ctx.storage, form.file.stream,
                               filename=form.file.filename or "upload", purpose=form.purpose,
                               fmt=form.format, max_bytes=ctx.settings.max_upload_bytes,
                               expires_after_seconds=form.expires_after_seconds,
                               default_retention_seconds=ctx.settings.file_retention_seconds)
    ctx.admission.admit_upload(session, who, record)  # under the tenant's lock; refused: removed
    return json_response(presenters.file_summary(record), 201,
                         {"Location": f"/v1/files/{record.id}"})


@api.get("/files", responses={200: FileList, 404: Problem})
def list_files(query: FileQuery) -> Response:
    """Files, newest first: `limit` of them after the file `after`."""
    page = files.list_files(db(), caller(), purpose=query.purpose, limit=query.limit,
                            after=query.after)
    body = presenters.list_page([presenters.file_summary(f) for f in page.items], page.has_more)
    return json_response({**body, "next_cursor": body["last_id"] if page.has_more else None})


@api.get("/files/<uuid:file_id>", responses={200: FileOut})
def get_file(path: FilePath) -> Response:
    return json_response(presenters.file_summary(files.get_file(db(), caller(), path.file_id)))


@api.get("/files/<uuid:file_id>/content", responses={})
def file_content(path: FilePath) -> Response:
    """The file's bytes, streamed."""
    record = files.get_file(db(), caller(), path.file_id)
    media = MEDIA_TYPES.get(record.format, "application/octet-stream")
    if record.compression == "gzip":
        media = "application/gzip"
    return Response(stream_with_context(files.iter_content(record.uri)), mimetype=media,
                    headers={"Content-Length": str(record.bytes),
                             "Content-Disposition": f'attachment; filename="{record.filename}"'})


@api.delete("/files/<uuid:file_id>", responses={204: None, 409: Problem})
def delete_file(path: FilePath) -> Response:
    files.delete_file(db(), caller(), path.file_id)
    return Response(status=204)
