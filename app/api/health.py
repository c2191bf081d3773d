"""Liveness, readiness and the OpenAPI document and docs."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, redirect
from sqlalchemy import select

from app.api.context import context, db
from app.api.responses import Response, json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks = {}
    try:
        db().execute(select(1))
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure
        checks["postgres"] = f"error: {exc.__class__.__name__}"
    try:
        client = redis.Redis.from_url(context().settings.redis_url, socket_timeout=1,
                                      socket_connect_timeout=1)
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ok" if ready else "unavailable", "checks": checks},
                         200 if ready else 503)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return json_response(current_app.api_doc)


@bp.get("/docs")
def docs() -> Response:
    return redirect("/openapi/swagger")
