"""The models page: each name's versions, aliases and variants with their measured metrics."""

from __future__ import annotations

from itertools import groupby

from flask import render_template

from app.api.context import caller, db
from app.api.models import model_summary
from app.services import models
from app.ui.blueprint import bp


@bp.route("/models", endpoint="models")
def models_page():
    found = models.list_models(db(), caller().tenant_id)
    facts = models.version_facts(found)
    rows = [model_summary(m, facts.get((m.tenant_id, m.name, m.version))) for m in found]
    named = [(name, list(versions)) for name, versions in groupby(rows, key=lambda r: r["name"])]
    return render_template("ui/models.html", named=named)
