"""Pages for files: the list, an upload (drag and drop, with progress), and one file with the
form that starts a file job on it, choosing the model, the id column and the kept columns from
the file's own header."""

from __future__ import annotations

from flask import redirect, render_template, request, url_for

from app import presenters
from app.api.context import caller, context, db
from app.api.jobs import submit_and_announce
from app.errors import InvalidInput
from app.services import commands, dashboard, files, models, webhooks
from app.ui.blueprint import bp
from app.ui.jobs import FORMATS


@bp.route("/files", endpoint="files")
def files_list():
    page = files.list_files(db(), caller(), purpose=None, limit=100, after=None).items
    return render_template("ui/files.html", files=[presenters.file_summary(f) for f in page])


@bp.route("/files", methods=["POST"])
def upload():
    """The same service as `POST /v1/files`, under the same limits."""
    sent = request.files.get("file")
    if sent is None or not sent.filename:
        raise InvalidInput("choose a file to upload")
    ctx, session, who = context(), db(), caller()
    ctx.admission.precheck_upload(session, who)
    record = files.upload_file(session, who, ctx.storage, sent.stream, filename=sent.filename,
                               purpose="input", fmt=None, max_bytes=ctx.settings.max_upload_bytes,
                               expires_after_seconds=None,
                               default_retention_seconds=ctx.settings.file_retention_seconds)
    ctx.admission.admit_upload(session, who, record)
    return redirect(url_for("ui.file", file_id=record.id))


@bp.route("/files/<file_id>")
def file(file_id: str):
    session, who = db(), caller()
    record = files.get_file(session, who, file_id)
    names = sorted({m.name for m in models.list_models(session, who.tenant_id)})
    return render_template("ui/file.html", file=presenters.file_summary(record),
                           columns=dashboard.file_columns(record), model_names=names,
                           formats=FORMATS)


@bp.route("/files/<file_id>/jobs", methods=["POST"])
def start_job(file_id: str):
    """A file job as `POST /v1/jobs` with `input_file` makes it, through the same submit."""
    form = request.form
    webhook_url = form.get("webhook_url", "").strip() or None
    if webhook_url:
        webhooks.check_webhook_url(webhook_url, webhooks.url_policy(context().settings))
    job = submit_and_announce(commands.SubmitFileJob(
        model=form.get("model", ""), input_file=file_id,
        output_format=form.get("output_format") or None,
        keep_columns=form.getlist("keep_columns") or None,
        id_column=form.get("id_column") or None, webhook_url=webhook_url,
        metadata={"label": form["label"]} if form.get("label") else None))
    return redirect(url_for("ui.job", job_id=job.id))
