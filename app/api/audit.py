"""HTTP entry point for the audit log: who changed what in the caller's tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.context import caller, db
from app.api.responses import Response, json_response
from app.api.schemas import NO_NUL, Problem
from app.api.usage_schemas import iso_only
from app.services import audit

tag = Tag(name="audit", description="The append-only record of changes in your tenant.")
api = APIBlueprint("audit", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}])


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=200)
    after: int | None = Field(default=None, ge=1, le=2**63 - 1,  # a bigint id
                              description="`last_id` of the previous page.")
    action: str | None = Field(default=None, max_length=64, pattern=NO_NUL, description="e.g. `job.cancel`")
    target_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    since: datetime | None = Field(default=None, description="ISO 8601: only events at or "
                                   "after this.")

    @field_validator("since", mode="before")
    @classmethod
    def _iso_only(cls, value: Any) -> Any:
        return iso_only(value)


class AuditEventOut(BaseModel):
    id: int
    object: Literal["audit_event"] = "audit_event"
    at: datetime
    actor: str = Field(description="The API key's prefix, `cli:<os user>` or `system`.")
    action: str
    target_type: str
    target_id: str | None
    request_id: str | None
    client_ip: str | None
    details: dict[str, Any]


class AuditList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEventOut]
    first_id: int | None
    last_id: int | None
    has_more: bool


def event_summary(event) -> dict[str, Any]:
    return {"id": event.id, "object": "audit_event", "at": event.at, "actor": event.actor,
            "action": event.action, "target_type": event.target_type,
            "target_id": event.target_id, "request_id": event.request_id,
            "client_ip": event.client_ip, "details": event.details}


@api.get("/audit", responses={200: AuditList, 401: Problem, 422: Problem})
def list_audit(query: AuditQuery) -> Response:
    """Your tenant's audit events, newest first."""
    found = audit.list_events(db(), caller(), limit=query.limit + 1, after=query.after,
                              action=query.action, target_id=query.target_id, since=query.since)
    page = found[:query.limit]
    return json_response({"object": "list", "data": [event_summary(e) for e in page],
                          "first_id": page[0].id if page else None,
                          "last_id": page[-1].id if page else None,
                          "has_more": len(found) > query.limit})
