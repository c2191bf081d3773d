"""The Flask app factory."""

from __future__ import annotations

import orjson
from flask import Request, current_app, request
from flask_openapi3 import Info, OpenAPI

from app.api import (audit, files, health, jobs, metrics, models, problem_types, problems, spec,
                     usage, webhooks)
from app.api import openai as openai_dialect
from app.api import requests as request_origin
from app.api.responses import OrjsonProvider, Response
from app.api.context import ApiContext, caller, close_session, commit_request
from app import tracing
from app.db import make_engine, make_sessionmaker
from app.errors import BadRequest
from app.settings import Settings, load_settings
from app import ui

BEARER = {"type": "http", "scheme": "bearer", "description": "An API key from `kiln keys create`."}


def require_api_key():
    """Every /v1 call needs a valid key; checked before the body is looked at."""
    if request.path.startswith("/v1/"):
        caller()


def reject_malformed_json():
    """Malformed JSON is a 400, before any validation turns it into a 422. A JSON body is parsed
    here once, and request validation reads the cached result."""
    if request.method in ("POST", "PUT", "PATCH"):
        if request.mimetype == "application/json":
            if request.content_length:
                request.get_json()  # KilnRequest.on_json_loading_failed raises the 400
        elif request.mimetype == "" and (data := request.get_data(cache=True)):
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None


SPOOL_ABOVE_BYTES = 1024 * 1024  # smaller multipart bodies are parsed in memory (werkzeug's)


class KilnRequest(Request):
    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        """A large upload spools into the storage's own folder, hashed as it is parsed, so that
        storing it is a rename rather than a second copy (`app.services.files.upload_file`)."""
        if (total_content_length or 0) > SPOOL_ABOVE_BYTES and (
                spool := current_app.extensions["kiln"].storage.spool()) is not None:
            return spool
        return super()._get_file_stream(total_content_length, content_type, filename,
                                        content_length)

    def on_json_loading_failed(self, e: ValueError | None):
        if e is None:  # not a JSON content type: werkzeug's 415
            return super().on_json_loading_failed(e)
        raise BadRequest(f"the body is not valid JSON: {e}") from None


class KilnApp(OpenAPI):
    """The request's unit of work: what a handler changes is committed once, after it returns
    (`commit_request`); handlers never commit."""

    def dispatch_request(self):
        return commit_request(super().dispatch_request())

    def generate_spec_json(self):
        """The generated document, finished in one place (`app.api.spec`)."""
        super().generate_spec_json()
        self.spec_json = spec.finish(self.spec_json, self.extensions["kiln"].settings)


def create_app(settings: Settings | None = None) -> OpenAPI:
    settings = settings or load_settings()
    tracing.configure("kiln-api")  # each API worker process builds its app, and its tracer
    app = KilnApp(__name__, info=Info(title="Kiln", version="0.1.0",
                                      description="Asynchronous batch inference."),
                  security_schemes={"bearer": BEARER},
                  validation_error_callback=problems.from_validation_error,
                  doc_prefix="/openapi")
    app.json = OrjsonProvider(app)
    app.request_class = KilnRequest
    app.response_class = Response
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    # A pooled connection per request thread: a pool smaller than the thread count closes the
    # connections it has no room for when they come back, and a burst of polls then opened a
    # new Postgres session (a backend fork) for every few requests.
    engine = make_engine(settings, name="kiln-api", pool_size=settings.api_threads)
    app.extensions["kiln"] = ApiContext.build(settings, make_sessionmaker(engine))
    if settings.metrics_enabled:  # first, so that it times the other hooks and what they answer
        metrics.init_app(app, app.extensions["kiln"].sessions)
    app.before_request(files.allow_large_uploads)
    app.before_request(require_api_key)
    app.before_request(reject_malformed_json)
    app.teardown_appcontext(close_session)
    request_origin.init_app(app)
    problems.init_app(app)
    app.register_api(jobs.api)
    app.register_api(models.api)
    app.register_api(files.api)
    app.register_api(webhooks.api)
    app.register_api(usage.api)
    app.register_api(audit.api)
    app.register_blueprint(health.bp)
    app.register_blueprint(problem_types.bp)
    app.register_blueprint(openai_dialect.blueprint())
    ui.init_app(app)
    return app
