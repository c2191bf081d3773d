"""Usage and throughput: the tenant's rows and model seconds per model and per day, its current
use against its limits, and the rows/s of its running jobs, refreshed live."""

from __future__ import annotations

from flask import render_template

from app import presenters
from app.api.context import caller, context, db
from app.services import commands, jobs
from app.services.usage import usage_report
from app.ui.blueprint import bp
from app.ui.charts import sparkline


def throughput() -> dict:
    running = jobs.list_jobs(db(), caller(), status="running", limit=100).items
    rows = [presenters.job_summary(j) for j in running]
    return {"running": rows, "rows_per_second": sum(r["rows_per_second"] or 0 for r in rows)}


@bp.route("/usage", endpoint="usage")
def usage_page():
    session, who, settings = db(), caller(), context().settings
    by_model = usage_report(session, who, settings, commands.ReportUsage(group_by="model"))
    by_day = usage_report(session, who, settings, commands.ReportUsage(group_by="day"))
    days = sorted(by_day["groups"], key=lambda g: g["day"])
    chart = sparkline([(float(i), float(g["rows"])) for i, g in enumerate(days)])
    return render_template("ui/usage.html", report=by_model, days=days, chart=chart,
                           **throughput())


@bp.route("/usage/live")
def usage_live():
    return render_template("ui/_usage_live.html", **throughput())
