"""The webhooks page: endpoints, create, rotate a secret (shown once, in that answer only),
delete, and the secret that signs deliveries to jobs' own URLs."""

from __future__ import annotations

from flask import redirect, render_template, request, url_for

from app import presenters
from app.api.context import caller, context, db
from app.services import webhooks
from app.ui.blueprint import bp

EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.expired", "job.progress")


def page(shown: dict | None = None, status: int = 200):
    session, who = db(), caller()
    endpoints = [presenters.endpoint_summary(e) for e in webhooks.list_endpoints(session, who).items]
    return render_template("ui/webhooks.html", endpoints=endpoints, events=EVENTS, shown=shown,
                           job_secret=webhooks.job_secret_info(session, who)), status


@bp.route("/webhooks", endpoint="webhooks")
def webhooks_page():
    return page()


@bp.route("/webhooks", methods=["POST"])
def create_webhook():
    endpoint, secret = webhooks.create_endpoint(
        db(), caller(), context().secret_box, webhooks.url_policy(context().settings),
        url=request.form.get("url", "").strip(),
        events=[e for e in request.form.getlist("events") if e in EVENTS] or None,
        description=request.form.get("description", "").strip() or None)
    return page({"what": f"endpoint {endpoint.url}", "secret": secret}, 201)


@bp.route("/webhooks/<webhook_id>/rotate", methods=["POST"])
def rotate_webhook(webhook_id: str):
    endpoint, secret = webhooks.rotate_endpoint_secret(db(), caller(), context().secret_box,
                                                       webhook_id)
    return page({"what": f"endpoint {endpoint.url}", "secret": secret})


@bp.route("/webhooks/<webhook_id>/delete", methods=["POST"])
def delete_webhook(webhook_id: str):
    webhooks.delete_endpoint(db(), caller(), webhook_id)
    return redirect(url_for("ui.webhooks"))


@bp.route("/webhooks/job-secret/rotate", methods=["POST"])
def rotate_job_secret():
    answer = webhooks.rotate_job_secret(db(), caller(), context().secret_box)
    return page({"what": "jobs' own webhook URLs", "secret": answer["secret"]})
