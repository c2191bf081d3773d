"""HTTP entry points for the model registry: list, register (ONNX upload), aliases."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_openapi3 import APIBlueprint, FileStorage, Tag
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.context import caller, context, db
from app.api.spec import operation_id
from app.api.responses import Response, json_response
from app import presenters
from app.api.schemas import (FormModel, LongListQuery, ModelList, ModelOut, Problem,
                             WholeNumber)
from app.domain.onnx_check import ALIAS, NAME
from app.errors import PayloadTooLarge
from app.orm import Model
from app.services import models
from app.services.paging import page_after

tag = Tag(name="models", description="Models jobs can use.")
api = APIBlueprint("models", __name__, url_prefix="/v1", abp_tags=[tag],
                   abp_security=[{"bearer": []}], operation_id_callback=operation_id)
DEFAULT_PROCESSING = {"kind": "tabular_classifier", "label_output": "label",
                      "probability_output": "probabilities"}
# What is particular to each route; `app.api.spec` adds what every route of its kind answers.


class RegisterModelForm(FormModel):
    """Multipart: the file plus form fields; flask-openapi3 decodes the JSON ones."""

    file: FileStorage = Field(description="The ONNX file, with every tensor inside it.")
    name: str = Field(min_length=1, max_length=200, pattern=NAME.pattern,
                      description="Registering a name again adds a version.")
    signature: dict[str, Any] = Field(description='JSON, e.g. `{"kind": "tabular", "columns": ["a", "b"], "input_name": "X"}`.')
    processing: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_PROCESSING), description='JSON; default `{"kind": "tabular_classifier", "label_output": "label", "probability_output": "probabilities"}`.')
    metrics: dict[str, Any] = Field(default_factory=dict, description="JSON object, yours (e.g. an export check), shown as is.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="JSON object: where the model came from.")

    @field_validator("name", mode="before")
    @classmethod
    def _decoded_number(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ModelPath(BaseModel):
    name: str = Field(pattern=NAME.pattern, description="The model's name.")


class SetAlias(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    alias: str = Field(min_length=1, max_length=64, pattern=ALIAS.pattern,
                       json_schema_extra={"not": {"enum": [models.LATEST]}},
                       description="e.g. `prod`; jobs name `model@prod`. `latest` is reserved: "
                                   "it always means the newest version.")
    version: WholeNumber = Field(ge=1, le=2**31 - 1, description="The version the alias points to.")


def model_summary(model: Model, facts: models.VersionFacts | None = None) -> dict:
    default = facts.default_variant if facts else models.BASE_VARIANT
    return {"id": str(model.id), "name": model.name, "version": model.version,
            "variant": model.variant, "default": model.variant == default,
            "format": model.format, "builtin": model.tenant_id is None,
            "signature": model.signature, "metrics": model.metrics,
            "provenance": model.provenance, "aliases": facts.aliases if facts else [],
            "created_at": model.created_at}


def allow_model_uploads() -> None:
    """An ONNX file may be far larger than a JSON body; the handler enforces the exact limit."""
    if request.method == "POST" and request.path == "/v1/models":
        request.max_content_length = context().settings.max_upload_bytes + 1024 * 1024


api.before_request(allow_model_uploads)


@api.get("/models", responses={200: ModelList, 404: Problem})
def list_models(query: LongListQuery) -> Response:
    """Models visible to the caller (its own and the built-in ones), one row per variant, by
    name then newest version: `limit` after the row whose id is `after`."""
    return model_page(models.list_models(db(), caller().tenant_id), query)


@api.get("/models/<name>", responses={200: ModelList})
def get_model(path: ModelPath, query: LongListQuery) -> Response:
    """The versions and variants a job naming `name` chooses from (yours, else the built-in),
    newest first: `limit` after the row whose id is `after`."""
    return model_page(models.model_versions(db(), caller().tenant_id, path.name), query)


def model_page(found: list[Model], query: LongListQuery) -> Response:
    facts = models.version_facts(found)
    page = page_after(found, lambda m: str(m.id), query.after, query.limit, "model")
    return json_response(presenters.list_page(
        [model_summary(m, facts.get((m.tenant_id, m.name, m.version))) for m in page.items],
        page.has_more))


@api.post("/models", responses={201: ModelOut, 409: Problem})
def register_model(form: RegisterModelForm) -> Response:
    """Register an ONNX model as the next version of `name`; checked against its signature
    (input name and width, required outputs) before anything is stored."""
    limit = context().settings.max_upload_bytes
    artifact = form.file.stream.read(limit + 1)
    if len(artifact) > limit:
        raise PayloadTooLarge(f"the model is larger than {limit} bytes (KILN_MAX_UPLOAD_BYTES)")
    model = models.register_user_model(
        db(), context().storage, caller().tenant_id,
        name=form.name, artifact=artifact, signature=form.signature, processing=form.processing,
        metrics=form.metrics, provenance=form.provenance)
    facts = models.VersionFacts([models.LATEST], models.BASE_VARIANT)
    return json_response(model_summary(model, facts), 201,
                         {"Location": f"/v1/models/{model.name}"})


@api.post("/models/<name>/aliases", responses={200: ModelOut, 409: Problem})
def set_alias(path: ModelPath, body: SetAlias) -> Response:
    """Point an alias at a version of your model; jobs that name `model@alias` get it
    (within `KILN_TUNING__CACHE_SECONDS`)."""
    session = db()
    model = models.set_alias(session, caller().tenant_id, path.name, body.alias, body.version)
    found = models.list_models(session, caller().tenant_id)
    return json_response(model_summary(model, models.version_facts(found).get(
        (model.tenant_id, model.name, model.version))))
