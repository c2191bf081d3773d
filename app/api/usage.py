"""HTTP entry point for usage: what the caller's tenant may use, uses now, and has used."""

from __future__ import annotations

from flask_openapi3 import APIBlueprint, Tag

from app.api.context import caller, context, db
from app.api.spec import operation_id
from app.api.responses import Response, json_response
from app.api.usage_schemas import UsageOut, UsageQuery
from app.services import commands
from app.services.usage import usage_report

tag = Tag(name="usage", description="Limits, current use and usage of the caller's tenant.")
api = APIBlueprint("usage", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}], operation_id_callback=operation_id)


@api.get("/usage", responses={200: UsageOut})
def get_usage(query: UsageQuery) -> Response:
    """The tenant's limits, current use, and the totals of its jobs created in
    [`start`, `end`), optionally per model or per UTC day (`groups`)."""
    command = commands.ReportUsage(start=query.start, end=query.end, group_by=query.group_by)
    return json_response(usage_report(db(), caller(), context().settings, command))
