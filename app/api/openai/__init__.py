"""The OpenAI Batch dialect at /openai/v1: the official `openai` client works against Kiln with
only its base URL changed. A thin layer over Kiln's own services; see docs/openai.md."""

from __future__ import annotations

from flask import Blueprint, request

from app.api.context import caller, context
from app.api.openai import batches, embeddings, errors, files
from app.errors import NotFound

PREFIX = "/openai/v1"


def authenticate() -> None:
    """A Kiln API key as the bearer token, checked before the body is looked at; uploads may be
    as large as Kiln's own."""
    caller()
    if request.path == f"{PREFIX}/files" and request.method == "POST":
        request.max_content_length = context().settings.max_upload_bytes + 1024 * 1024


def unsupported(rest: str):
    """Anything else under the prefix (chat completions, images, …) in the dialect's shape."""
    raise NotFound(f"{request.method} {PREFIX}/{rest} is not part of Kiln's OpenAI dialect; "
                   "see docs/openai.md for what is")


def blueprint() -> Blueprint:
    bp = Blueprint("openai", __name__, url_prefix=PREFIX)
    bp.before_request(authenticate)
    bp.register_error_handler(Exception, errors.from_exception)
    rules = [("/files", files.create_file, "POST"), ("/files", files.list_files, "GET"),
             ("/files/<file_id>", files.retrieve_file, "GET"),
             ("/files/<file_id>", files.delete_file, "DELETE"),
             ("/files/<file_id>/content", files.file_content, "GET"),
             ("/batches", batches.create_batch, "POST"), ("/batches", batches.list_batches, "GET"),
             ("/batches/<batch_id>", batches.retrieve_batch, "GET"),
             ("/batches/<batch_id>/cancel", batches.cancel_batch, "POST"),
             ("/embeddings", embeddings.create_embeddings, "POST")]
    for rule, view, method in rules:
        bp.add_url_rule(rule, f"{view.__module__.rsplit('.', 1)[-1]}_{view.__name__}", view,
                        methods=[method])
    bp.add_url_rule("/<path:rest>", "unsupported", unsupported,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    return bp
