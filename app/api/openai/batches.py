"""`/openai/v1/batches`: a batch is a Kiln file job (app.services.openai_batches)."""

from __future__ import annotations

from dataclasses import replace

from flask import request

from app.api.context import caller, context, db, on_commit
from app.api.openai.files import bounded_limit
from app.api.openai.presenters import batch_object, page
from app.api.responses import Response, json_response
from app.errors import BadRequest
from app.services import openai_batches as batches
from app.services.openai_outputs import ensure_outputs


def json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def create_batch() -> Response:
    body = json_body()
    for name in ("input_file_id", "endpoint"):
        if not isinstance(body.get(name), str):
            raise BadRequest(f"{name} is required (a string)")
    command = batches.CreateBatch(
        input_file_id=body["input_file_id"], endpoint=body["endpoint"],
        completion_window=str(body.get("completion_window", "24h")),
        metadata=batches.check_metadata(body.get("metadata")))
    ctx, who = context(), caller()
    writer = ctx.admission.writer_for(who, ctx.intake.writer)  # limits: 429 when over
    intake = ctx.intake if writer is ctx.intake.writer else replace(ctx.intake, writer=writer)
    job = batches.create_batch(db(), ctx.sessions, who, ctx.storage, intake, command)
    if job.status == "validating":
        on_commit(lambda: ctx.publisher.publish_jobs([job.id], job.options.get("queue")))
    return json_response(batch_object(job))


def retrieve_batch(batch_id: str) -> Response:
    session = db()
    job = batches.get_batch(session, caller(), batch_id)
    return json_response(batch_object(ensure_outputs(session, context().storage, job)))


def list_batches() -> Response:
    session, storage = db(), context().storage
    limit = bounded_limit(request.args.get("limit"), 100)
    rows, has_more = batches.list_batches(session, caller(), limit=limit,
                                          after=request.args.get("after"))
    return json_response(page([batch_object(ensure_outputs(session, storage, job))
                               for job in rows], has_more))


def cancel_batch(batch_id: str) -> Response:
    session = db()
    job = batches.cancel_batch(session, caller(), batch_id)
    return json_response(batch_object(ensure_outputs(session, context().storage, job)))
