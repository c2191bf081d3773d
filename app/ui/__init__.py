"""The web dashboard under /ui: server-rendered pages over the same services as the API, so
tenant scoping is the same code.

Sign-in turns an API key into a signed, expiring session cookie that holds the key's hash
(never the key); every state-changing form carries a CSRF token; every answer a strict CSP.
"""

from __future__ import annotations

from flask import Flask, redirect

from app.ui import files, jobs, models, security, usage, webhooks  # noqa: F401 - their views
from app.ui.blueprint import bp


def init_app(app: Flask) -> None:
    settings = app.extensions["kiln"].settings
    app.session_interface = security.DashboardSessions()
    app.config.update(SESSION_COOKIE_NAME="kiln_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_PATH="/ui",
                      PERMANENT_SESSION_LIFETIME=settings.ui_session_seconds)
    app.register_blueprint(bp)
    app.add_url_rule("/", "dashboard_home", lambda: redirect("/ui/", 302))
