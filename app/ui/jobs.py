"""Pages for jobs: the list (filters, search, paging, live rows) and one job (timeline, counts,
progress, rate chart, failed rows, downloads, cancel, retry, webhook deliveries)."""

from __future__ import annotations

from flask import abort, redirect, render_template, request, stream_with_context, url_for

from app import presenters
from app.api.context import caller, context, db, on_commit
from app.api.jobs import file_job_rows
from app.api.responses import Response
from app.domain.states import JobStatus, is_terminal
from app.services import commands, dashboard, jobs, models, webhooks
from app.ui.blueprint import bp
from app.ui.charts import sparkline

PAGE_SIZE = 25
FORMATS = ("csv", "jsonl", "parquet")


@bp.route("/")
def home():
    return redirect(url_for("ui.jobs"))


def listing_args() -> dict[str, str]:
    return {name: request.args.get(name, "").strip() for name in ("status", "model", "q")}


def job_page(args: dict[str, str], cursor: str | None):
    page = jobs.list_jobs(db(), caller(), status=args["status"] or None,
                          model=args["model"] or None, search=args["q"] or None,
                          limit=PAGE_SIZE, after=cursor or None)
    next_cursor = str(page.items[-1].id) if page.has_more else None
    return [presenters.job_summary(job) for job in page.items], next_cursor


@bp.route("/jobs", endpoint="jobs")
def jobs_list():
    args, cursor = listing_args(), request.args.get("cursor")
    rows, next_cursor = job_page(args, cursor)
    names = sorted({m.name for m in models.list_models(db(), caller().tenant_id)})
    return render_template("ui/jobs.html", rows=rows, next_cursor=next_cursor, args=args,
                           cursor=cursor or "", statuses=[s.value for s in JobStatus],
                           model_names=names, live=any(not is_terminal(r["status"]) for r in rows))



@bp.route("/jobs/rows")
def jobs_rows():
    """The list's rows alone, polled while any of them is still moving."""
    rows, _ = job_page(listing_args(), request.args.get("cursor"))
    return render_template("ui/_job_rows.html", rows=rows, args=listing_args(),
                           cursor=request.args.get("cursor", ""),
                           live=any(not is_terminal(r["status"]) for r in rows))


def job_view(job_id: str) -> dict:
    session, who = db(), caller()
    job = jobs.get_job(session, who, job_id)
    summary = presenters.job_summary(job)
    return {"job": summary, "terminal": is_terminal(job.status),
            "chart": sparkline(dashboard.rate_points(session, job)),
            "failed": dashboard.failed_rows(session, job) if not summary["results_expired"]
            else [],
            "deliveries": [presenters.delivery_summary(d)
                           for d in webhooks.list_job_deliveries(session, who, job_id).items],
            "formats": FORMATS}


@bp.route("/jobs/<job_id>")
def job(job_id: str):
    return render_template("ui/job.html", **job_view(job_id))


@bp.route("/jobs/<job_id>/live")
def job_live(job_id: str):
    """The job's moving parts alone, polled until the job ends."""
    return render_template("ui/_job_live.html", **job_view(job_id))


@bp.route("/jobs/<job_id>/cancel", methods=["POST"])
def cancel(job_id: str):
    jobs.cancel_job(db(), caller(), job_id)
    return redirect(url_for("ui.job", job_id=job_id))


@bp.route("/jobs/<job_id>/retry", methods=["POST"])
def retry(job_id: str):
    child = jobs.retry_failed_rows(db(), caller(), commands.RetryFailedRows(job_id))
    on_commit(lambda: context().publisher.publish_jobs([child.id]))
    return redirect(url_for("ui.job", job_id=child.id))


@bp.route("/jobs/<job_id>/download/<kind>")
def download(job_id: str, kind: str):
    """Results or errors, in the format asked for, streamed as the API streams them."""
    fmt = request.args.get("format") or None
    if kind not in ("results", "errors") or (fmt is not None and fmt not in FORMATS):
        abort(404)
    found = jobs.job_with_results(db(), caller(), job_id)
    if found.kind == "inline":
        if kind != "results":
            abort(404)
        lines = jobs.iter_result_lines(context().sessions, found.id)
        return Response(stream_with_context(lines), mimetype="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="{found.id}-results.jsonl"'})
    return file_job_rows(found, kind, fmt)


@bp.route("/deliveries/<delivery_id>/redeliver", methods=["POST"])
def redeliver(delivery_id: str):
    copy = webhooks.redeliver(db(), caller(), delivery_id)
    return redirect(url_for("ui.job", job_id=copy.job_id) if copy.job_id
                    else url_for("ui.webhooks"))
