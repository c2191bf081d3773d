"""Sign-in, sign-out, the session cookie, CSRF tokens and the security headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import (Flask, abort, current_app, g, redirect, render_template, request, session,
                   url_for)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from app.api.context import context, db
from app.errors import KilnError, TooManyRequests, Unauthorized
from app.secretbox import KEY_FILE, load_or_create_key
from app.services.auth import authenticate_hash, hash_key
from app.settings import Settings
from app.ui.blueprint import bp
from app.ui.signouts import SignedOut

PUBLIC = {"ui.signin", "ui.static"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")


def session_secret(settings: Settings) -> str:
    """Derived from KILN_SECRET_KEY (its first key) or $KILN_HOME/secret.key, never equal to it:
    the cookie's signing key and the secret box's encryption key stay apart."""
    base = (settings.secret_key.split(",")[0].strip() if settings.secret_key
            else load_or_create_key(settings.home / KEY_FILE))
    return hmac.new(base.encode(), b"kiln-ui-session", hashlib.sha256).hexdigest()


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, keyed from the settings on first use (creating the app reads no
    key file), and `Secure` whenever the request came over HTTPS."""

    def open_session(self, app: Flask, request):
        """Only the dashboard has sessions: an API request pays for no cookie parsing, and
        its app reads no key file."""
        if request.path != "/ui" and not request.path.startswith("/ui/"):
            return None  # Flask's null session
        return super().open_session(app, request)

    def get_signing_serializer(self, app: Flask):
        if not app.secret_key:
            app.secret_key = session_secret(app.extensions["kiln"].settings)
        return super().get_signing_serializer(app)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def signed_out() -> SignedOut:
    extensions = current_app.extensions
    if "kiln_ui_signed_out" not in extensions:
        extensions["kiln_ui_signed_out"] = SignedOut(context().settings.redis_url)
    return extensions["kiln_ui_signed_out"]


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(sent, expected):
        abort(400, description="The form's CSRF token is missing or wrong: reload the page.")


@bp.app_context_processor
def template_globals() -> dict:
    return {"csrf_token": csrf_token, "tenant_name": session.get("tenant")}


@bp.before_request
def signed_in_and_checked():
    if request.endpoint == "ui.upload":  # an upload may be far larger than a form
        request.max_content_length = context().settings.max_upload_bytes + 1024 * 1024
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        check_csrf()
    if request.endpoint in PUBLIC:
        return None
    key_hash = session.get("key_hash")
    if key_hash and signed_out().contains(session.get("sid", "")):
        session.clear()
    elif key_hash:
        try:
            g.caller = authenticate_hash(db(), key_hash, context().callers)
            return None
        except Unauthorized:
            session.clear()
    if request.headers.get("HX-Request"):
        return "", 401, {"HX-Redirect": url_for("ui.signin")}
    return redirect(url_for("ui.signin", next=request.path))


@bp.after_request
def security_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(KilnError)
def kiln_error(error: KilnError):
    headers = ({"Retry-After": str(error.retry_after_seconds)}
               if isinstance(error, TooManyRequests) else {})
    return (render_template("ui/error.html", title=error.title, detail=error.detail),
            error.status, headers)


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):
    title = "Refused" if error.code == 400 else error.name
    return render_template("ui/error.html", title=title, detail=error.description), error.code


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    if request.method == "GET":
        csrf_token()
        return render_template("ui/signin.html")
    key = request.form.get("api_key", "").strip()
    try:
        caller = authenticate_hash(db(), hash_key(key), context().callers) if key else None
    except Unauthorized:
        caller = None
    if caller is None:
        return render_template("ui/signin.html", error="That API key is unknown or revoked."), 401
    session.clear()
    session.permanent = True
    session.update(key_hash=hash_key(key), tenant=caller.tenant_name,
                   csrf=secrets.token_urlsafe(32), sid=secrets.token_urlsafe(16))
    target = request.args.get("next", "")
    return redirect(target if target.startswith("/ui/") else url_for("ui.jobs"))


@bp.route("/signout", methods=["POST"])
def signout():
    if "sid" in session:
        signed_out().record(session["sid"], current_app.permanent_session_lifetime.total_seconds())
    session.clear()
    return redirect(url_for("ui.signin"))
