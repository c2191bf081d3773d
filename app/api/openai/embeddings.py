"""`POST /openai/v1/embeddings`: a small input answered synchronously, as an inline Kiln job
at high priority that the request waits for (so it is counted, limited and audited as any job)."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import orjson
from sqlalchemy import select

from app.api.context import caller, context, db
from app.api.openai.batches import json_body
from app.api.responses import Response, json_response
from app.domain.openai_batch import TEXT_FIELD, word_count
from app.domain.states import is_terminal
from app.errors import BadRequest, DatabaseUnavailable, InvalidInput
from app.orm import Job
from app.services import jobs
from app.services.commands import SubmitJob

MAX_INPUTS = 2048  # the official API's own limit per request
WAIT_SECONDS = 60.0
PRIORITY = 100  # the highest a job can have: someone is waiting on it


def create_embeddings() -> Response:
    body = json_body()
    texts = [body.get("input")] if isinstance(body.get("input"), str) else body.get("input")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("input must be a string or a non-empty list of strings")
    if len(texts) > MAX_INPUTS:
        raise BadRequest(f"at most {MAX_INPUTS} inputs per request; use a batch for more")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be float or base64")
    if not isinstance(body.get("model"), str):
        raise BadRequest("model is required (a string)")
    ctx, who = context(), caller()
    writer = ctx.admission.writer_for(who, ctx.intake.writer)
    intake = ctx.intake if writer is ctx.intake.writer else replace(ctx.intake, writer=writer)
    command = SubmitJob(model=body["model"], inputs=[{TEXT_FIELD: t} for t in texts],
                        priority=PRIORITY)
    job, _ = jobs.submit(db(), who, command, intake)
    ctx.announce(job)
    outputs = wait_for_outputs(job.id, len(texts))
    tokens = word_count(texts)
    return json_response({
        "object": "list", "model": job.model_name,
        "data": [{"object": "embedding", "index": i, "embedding": encode(o["embedding"], encoding)}
                 for i, o in enumerate(outputs)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    import numpy as np  # only for base64 answers; an API process need not load it

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def wait_for_outputs(job_id, count: int) -> list[dict]:
    """The job's outputs once it ends; a failed input is the request's 400."""
    ctx, deadline, pause = context(), time.monotonic() + WAIT_SECONDS, 0.005
    while True:
        with ctx.sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
        if is_terminal(status):
            break
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(f"the embeddings (job {job_id}) took longer than "
                                      f"{WAIT_SECONDS:.0f} s; retry, or use a batch")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    lines = [orjson.loads(line) for line in jobs.iter_result_lines(ctx.sessions, job_id)]
    failed = next((line for line in lines if line.get("error") is not None), None)
    if status != "succeeded" or failed is not None or len(lines) != count:
        error = (failed or {}).get("error") or {}
        raise InvalidInput(f"input {(failed or {}).get('index')}: "
                           f"{error.get('message', f'the job ended {status}')}")
    return [line["output"] for line in lines]
