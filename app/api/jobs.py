"""HTTP entry points for jobs: parse, call one service function, shape the response."""

from __future__ import annotations

import time
from dataclasses import replace

from typing import Any

from flask import request, stream_with_context
from flask_openapi3 import APIBlueprint, Tag

from app import presenters
from app.api.context import caller, context, db, on_commit
from app.api.estimate_schemas import EstimateOut
from app.api.spec import operation_id
from app.api.responses import Response, json_response
from app.api.schemas import (FormatQuery, JobDeleted, JobList, JobOut, JobPath, JobQuery, Problem,
                             SubmitJob, WaitQuery)
from app.db import close_quietly
from app.errors import Conflict
from app.domain.formats import MEDIA_TYPES
from app.domain.states import is_terminal
from app.services import commands, estimates, files, jobs, retention, webhooks

tag = Tag(name="jobs", description="Submit inference jobs, follow them, download results.")
api = APIBlueprint("jobs", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}], operation_id_callback=operation_id)
# What is particular to each route; `app.api.spec` adds what every route of its kind answers.


def submit_command(body: SubmitJob, idempotency_key: str | None,
                   raw_body: Any) -> commands.SubmitJob | commands.SubmitFileJob:
    """The service's command for a validated request; `raw_body` (the JSON as sent) is
    fingerprinted only when an Idempotency-Key makes a replay possible."""
    common = dict(model=body.model, metadata=body.metadata, priority=body.priority,
                  webhook_url=str(body.webhook_url) if body.webhook_url else None,
                  idempotency_key=idempotency_key,
                  fingerprint=jobs.request_fingerprint(raw_body) if idempotency_key else None,
                  variant=body.variant, completion_window_seconds=body.completion_window_seconds,
                  require_gpu=body.require_gpu,
                  results_expire_after_seconds=body.results_expire_after_seconds)
    if body.input_file is not None:
        return commands.SubmitFileJob(
            input_file=body.input_file, output_format=body.output_format,
            keep_columns=body.keep_columns, id_column=body.id_column,
            max_failed_fraction=body.max_failed_fraction, **common)
    return commands.SubmitJob(inputs=body.inputs, **common)


@api.post("/jobs", responses={202: JobOut, 404: Problem, 409: Problem, 429: Problem})
def submit_job(body: SubmitJob) -> Response:
    """Submit an inline job. Send `Idempotency-Key` to make retries safe."""
    ctx = context()
    if body.webhook_url:  # the SSRF guard; checked again each time it is sent
        webhooks.check_webhook_url(str(body.webhook_url), webhooks.url_policy(ctx.settings))
    key = request.headers.get("Idempotency-Key")
    job = submit_and_announce(submit_command(body, key, request.get_json(silent=True) if key
                                             else None))
    return json_response(presenters.job_summary(job), 202, {"Location": f"/v1/jobs/{job.id}"})


def submit_and_announce(command: commands.SubmitJob | commands.SubmitFileJob):
    """Submit for the request's caller under its limits (429 when over), and tell the workers
    about a new job; the API and the dashboard both submit through here."""
    ctx, who = context(), caller()
    writer = ctx.admission.writer_for(who, ctx.intake.writer)
    intake = ctx.intake if writer is ctx.intake.writer else replace(ctx.intake, writer=writer)
    job, created = jobs.submit(db(), who, command, intake)
    # (the writer committed the job: the session only ever read)
    if created:
        ctx.announce(job)
    return job


@api.post("/jobs/estimate", responses={200: EstimateOut, 404: Problem})
def estimate_job(body: SubmitJob) -> Response:
    """What `POST /v1/jobs` with this body would be, queueing nothing: the rows (a file's
    counted exactly, after the checks its validation makes), the rows queued ahead, and when it
    would start and finish at the model's recent rate."""
    ctx = context()
    settings = ctx.settings
    return json_response(estimates.estimate(
        db(), caller(), submit_command(body, None, None), ctx.intake,
        chunk_rows=settings.tuning.chunk_rows,
        default_rows_per_second=settings.estimate_rows_per_second))


@api.get("/jobs", responses={200: JobList, 400: Problem, 404: Problem})
def list_jobs(query: JobQuery) -> Response:
    """Jobs, newest first: `limit` of them after the job `after` (the previous page's
    `last_id`)."""
    page = jobs.list_jobs(db(), caller(), status=query.status, model=query.model,
                          limit=query.limit, after=query.after or query.cursor,
                          search=query.search)
    body = presenters.list_page([presenters.job_summary(j) for j in page.items], page.has_more)
    return json_response({**body, "next_cursor": body["last_id"] if page.has_more else None})


@api.get("/jobs/<uuid:job_id>", responses={200: JobOut})
def get_job(path: JobPath, query: WaitQuery) -> Response:
    """A job's status, counts and timestamps. With `wait`, answered once the job has ended, or
    when that many seconds have passed: one request where a client would poll."""
    who = caller()
    if not query.wait:
        return json_response(presenters.job_summary(jobs.get_job(db(), who, path.job_id)))
    deadline = time.monotonic() + query.wait
    waiters = context().waiters
    with waiters.watch(path.job_id) as ended:  # before the read: no ending missed
        job = jobs.get_job(db(), who, path.job_id)
        while ended is not None and not is_terminal(job.status):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            db().close()  # no pooled connection held while waiting
            ended.wait(min(left, waiters.recheck_seconds))
            ended.clear()
            job = jobs.get_job(db(), who, path.job_id)
    return json_response(presenters.job_summary(job))


@api.post("/jobs/<uuid:job_id>/cancel", responses={200: JobOut, 409: Problem})
def cancel_job(path: JobPath) -> Response:
    """Cancel: queued jobs end at once, running ones at their next batch boundary."""
    job = jobs.cancel_job(db(), caller(), path.job_id)
    return json_response(presenters.job_summary(job))


@api.delete("/jobs/<uuid:job_id>", responses={200: JobDeleted, 409: Problem})
def delete_job(path: JobPath) -> Response:
    """Delete a finished job's results, errors, part and output files (409 while it is not
    finished); afterwards it is a 404, but its usage still counts."""
    ctx = context()
    job_id = jobs.delete_job(db(), caller(), commands.DeleteJob(path.job_id))
    on_commit(lambda: retention.collect_garbage(ctx.sessions, ctx.settings.sweep_batch))
    return json_response({"id": str(job_id), "deleted": True})


@api.get("/jobs/<uuid:job_id>/results", responses={410: Problem})
def job_results(path: JobPath, query: FormatQuery) -> Response:
    """Results. Inline jobs: JSONL in input order, `{"index", "output"}` or `{"index", "error"}`.
    File jobs: rows joined to the input (id, kept columns, outputs) in `format`; while running,
    the rows of the chunks finished so far. 410 once the results expired."""
    job = jobs.job_with_results(db(), caller(), path.job_id)
    if job.kind == "inline":
        lines = jobs.iter_result_lines(context().sessions, job.id)
        return Response(stream_with_context(lines), mimetype="application/x-ndjson",
                        headers={"X-Job-Status": job.status})
    return file_job_rows(job, "results", query.format)


@api.get("/jobs/<uuid:job_id>/errors", responses={409: Problem, 410: Problem})
def job_errors(path: JobPath, query: FormatQuery) -> Response:
    """A file job's failed rows: id columns plus `error_code` and `error_message`."""
    job = jobs.job_with_results(db(), caller(), path.job_id)
    if job.kind == "inline":
        raise Conflict("inline jobs report errors per line in /results")
    return file_job_rows(job, "errors", query.format)


@api.post("/jobs/<uuid:job_id>/retry", responses={202: JobOut, 409: Problem, 429: Problem})
def retry_job(path: JobPath) -> Response:
    """A child job over only the rows this file job failed."""
    child = jobs.retry_failed_rows(db(), caller(), commands.RetryFailedRows(path.job_id))
    on_commit(lambda: context().publisher.publish_jobs([child.id]))
    return json_response(presenters.job_summary(child), 202, {"Location": f"/v1/jobs/{child.id}"})


def file_job_rows(job, kind: str, fmt: str | None) -> Response:
    sessions = context().sessions
    session = sessions()
    try:
        uri, out_fmt = files.stored_output(session, job, kind, fmt)
        if uri is not None:  # the joined file, as stored: bytes copied, no pyarrow
            pieces = files.iter_content(uri)
        else:
            # parts, or another format: pyarrow, loaded by an API process once it converts
            from app.services import outputs

            pieces = outputs.converted_parts(session, job, kind, out_fmt)
    except BaseException:
        close_quietly(session)
        raise

    def body():
        try:
            yield from pieces
        finally:
            close_quietly(session)

    return Response(stream_with_context(body()), mimetype=MEDIA_TYPES[out_fmt],
                    headers={"X-Job-Status": job.status,
                             "Content-Disposition": f'attachment; filename="{job.id}-{kind}.{out_fmt}"'})
