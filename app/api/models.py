"""HTTP entry points for the model registry."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from app.api.context import caller, db
from app.api.responses import json_response
from app.api.schemas import ModelList, Problem
from app.orm import Model
from app.services import models

tag = Tag(name="models", description="Models jobs can use.")
api = APIBlueprint("models", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}])


def model_summary(model: Model) -> dict:
    return {"id": str(model.id), "name": model.name, "version": model.version,
            "variant": model.variant, "format": model.format, "builtin": model.tenant_id is None,
            "signature": model.signature, "metrics": model.metrics,
            "provenance": model.provenance, "aliases": model.aliases,
            "created_at": model.created_at}


@api.get("/models", responses={200: ModelList, 401: Problem})
def list_models() -> Response:
    """Models visible to the caller: its own and the built-in ones."""
    found = models.list_models(db(), caller().tenant_id)
    return json_response({"object": "list", "data": [model_summary(m) for m in found]})
