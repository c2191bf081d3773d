"""HTTP entry points for webhooks: endpoints, signing secrets (shown once), delivery records."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from app.api.context import caller, context, db
from app.api.spec import operation_id
from app.api.responses import Response, json_response
from app.api.schemas import (NO_NUL, JobPath, ListPage, LongListQuery, Problem, ResourceId,
                             WebhookUrl, resource_id)
from app import presenters
from app.services import webhooks

tag = Tag(name="webhooks", description="Signed notifications when jobs end (Standard Webhooks).")
api = APIBlueprint("webhooks", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}], operation_id_callback=operation_id)
# What is particular to each route; `app.api.spec` adds what every route of its kind answers.
EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "job.expired", "job.progress"]


class CreateWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: WebhookUrl = Field(description="Where to POST events; https unless the operator allows.")
    events: list[EventType] | None = Field(default=None, description="Omitted: every terminal event. `job.progress` (file jobs, at most one per "
                            "KILN_PROGRESS_EVENT_SECONDS) is sent only when listed.")
    description: str | None = Field(default=None, max_length=500, pattern=NO_NUL)
    event_format: Literal["kiln", "openai"] = Field(
        default="kiln", description="`openai`: the OpenAI dialect's events for its batches "
        "(`batch.completed` and so on, as `client.webhooks.unwrap` reads them); see docs/openai.md")


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    event_format: Literal["kiln", "openai"] = "kiln"
    description: str | None
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    secret_rotated_at: datetime | None
    secret: str | None = Field(default=None, description="Only when created or rotated.")


class WebhookList(ListPage):
    data: list[WebhookOut]


class JobSecretOut(BaseModel):
    object: Literal["webhook_job_secret"] = "webhook_job_secret"
    exists: bool
    created_at: datetime | None
    rotated_at: datetime | None
    secret: str | None = Field(default=None, description="Only in the answer to a rotation.")


class DeliveryOut(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event: str
    webhook_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    job_id: str | None
    endpoint_id: str | None
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    response_ms: int | None
    created_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    history: list[dict[str, Any]]


class DeliveryList(ListPage):
    data: list[DeliveryOut]


class WebhookPath(BaseModel):
    webhook_id: ResourceId = resource_id("The endpoint's id.")


class DeliveryPath(BaseModel):
    delivery_id: ResourceId = resource_id("The delivery's id.")


@api.post("/webhooks", responses={201: WebhookOut})
def create_webhook(body: CreateWebhook) -> Response:
    """Register an endpoint for your job events. The signing secret is in this answer only."""
    endpoint, secret = webhooks.create_endpoint(
        db(), caller(), context().secret_box, webhooks.url_policy(context().settings),
        url=str(body.url), events=body.events, description=body.description,
        event_format=body.event_format)
    return json_response(presenters.endpoint_summary(endpoint, secret), 201,
                         {"Location": f"/v1/webhooks/{endpoint.id}"})


@api.get("/webhooks", responses={200: WebhookList, 404: Problem})
def list_webhooks(query: LongListQuery) -> Response:
    """Your endpoints (never their secrets), oldest first: `limit` after the endpoint `after`."""
    page = webhooks.list_endpoints(db(), caller(), limit=query.limit, after=query.after)
    return json_response(presenters.list_page(
        [presenters.endpoint_summary(e) for e in page.items], page.has_more))


@api.get("/webhooks/job-secret", responses={200: JobSecretOut})
def job_secret() -> Response:
    """Whether the secret signing deliveries to jobs' own `webhook_url`s exists (not its value)."""
    return json_response(webhooks.job_secret_info(db(), caller()))


@api.post("/webhooks/job-secret/rotate", responses={200: JobSecretOut})
def rotate_job_secret() -> Response:
    """Create or replace the job-URL signing secret; the new value is in this answer only."""
    answer = webhooks.rotate_job_secret(db(), caller(), context().secret_box)
    return json_response(answer)


@api.get("/webhooks/<uuid:webhook_id>", responses={200: WebhookOut})
def get_webhook(path: WebhookPath) -> Response:
    """One endpoint (never its secret)."""
    return json_response(presenters.endpoint_summary(
        webhooks.get_endpoint(db(), caller(), path.webhook_id)))


@api.delete("/webhooks/<uuid:webhook_id>", responses={204: None})
def delete_webhook(path: WebhookPath) -> Response:
    """Delete an endpoint and its deliveries; nothing more is sent to it."""
    webhooks.delete_endpoint(db(), caller(), path.webhook_id)
    return Response(status=204)


@api.post("/webhooks/<uuid:webhook_id>/rotate-secret", responses={200: WebhookOut})
def rotate_webhook_secret(path: WebhookPath) -> Response:
    """Replace an endpoint's secret; the new value is in this answer only."""
    endpoint, secret = webhooks.rotate_endpoint_secret(db(), caller(), context().secret_box,
                                                       path.webhook_id)
    return json_response(presenters.endpoint_summary(endpoint, secret))


@api.post("/webhooks/<uuid:webhook_id>/enable", responses={200: WebhookOut})
def enable_webhook(path: WebhookPath) -> Response:
    """Send to an endpoint again after it was disabled (it answered 410 Gone)."""
    endpoint = webhooks.enable_endpoint(db(), caller(), path.webhook_id)
    return json_response(presenters.endpoint_summary(endpoint))


@api.get("/jobs/<uuid:job_id>/webhooks", responses={200: DeliveryList, 404: Problem})
def job_webhooks(path: JobPath, query: LongListQuery) -> Response:
    """A job's webhook deliveries with their attempts, response codes and times, oldest first:
    `limit` after the delivery `after`."""
    page = webhooks.list_job_deliveries(db(), caller(), path.job_id, limit=query.limit,
                                        after=query.after)
    return json_response(presenters.list_page(
        [presenters.delivery_summary(d) for d in page.items], page.has_more))


@api.get("/webhook-deliveries/<uuid:delivery_id>", responses={200: DeliveryOut})
def get_delivery(path: DeliveryPath) -> Response:
    """One delivery."""
    return json_response(presenters.delivery_summary(
        webhooks.get_delivery(db(), caller(), path.delivery_id)))


@api.post("/webhook-deliveries/<uuid:delivery_id>/redeliver", responses={202: DeliveryOut, 409: Problem})
def redeliver(path: DeliveryPath) -> Response:
    """Send an event again: a new delivery with the same `webhook-id` and body."""
    copy = webhooks.redeliver(db(), caller(), path.delivery_id)
    return json_response(presenters.delivery_summary(copy), 202,
                         {"Location": f"/v1/webhook-deliveries/{copy.id}"})
