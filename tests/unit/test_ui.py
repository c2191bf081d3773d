"""The dashboard's pieces that need no database: redirects, headers, CSRF, the session key,
the charts. Signing in and every page are tested in a real browser (tests/browser)."""

from __future__ import annotations

import pytest

from app.api import create_app
from app.settings import Settings
from app.ui.charts import sparkline
from app.ui.security import session_secret

UNREACHABLE = dict(database_url="postgresql://nobody@127.0.0.1:1/none",
                   redis_url="redis://127.0.0.1:1/0", secret_key="an operator's secret")


@pytest.fixture
def client():
    return create_app(Settings(**UNREACHABLE)).test_client()


def test_the_base_url_goes_to_the_dashboard_and_pages_need_a_session(client):
    home = client.get("/")
    assert home.status_code == 302 and home.headers["Location"] == "/ui/"
    page = client.get("/ui/jobs")
    assert page.status_code == 302 and page.headers["Location"].startswith("/ui/signin")
    live = client.get("/ui/jobs/rows", headers={"HX-Request": "true"})
    assert live.status_code == 401 and live.headers["HX-Redirect"] == "/ui/signin"


def test_pages_carry_a_strict_csp_and_no_inline_script(client):
    page = client.get("/ui/signin")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    html = page.get_data(as_text=True)
    assert "<script>" not in html and " on" + "click=" not in html
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here
    assert "Secure" in client.get("/ui/signin", base_url="https://kiln.example").headers[
        "Set-Cookie"]


def test_a_post_without_the_csrf_token_is_refused_before_anything_else(client):
    client.get("/ui/signin")
    for data in ({"api_key": "kiln_x"}, {"api_key": "kiln_x", "csrf_token": "forged"}):
        refused = client.post("/ui/signin", data=data)
        assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True)


def test_api_requests_open_no_session_and_read_no_key_file(tmp_path):
    api = create_app(Settings(**{**UNREACHABLE, "secret_key": None, "home": tmp_path}))
    answer = api.test_client().get("/v1/jobs")
    assert answer.status_code == 401 and "Set-Cookie" not in answer.headers
    assert not (tmp_path / "secret.key").exists()


def test_the_cookie_key_is_derived_not_the_operators_secret(tmp_path):
    settings = Settings(**UNREACHABLE)
    derived = session_secret(settings)
    assert derived == session_secret(settings) and "operator" not in derived
    assert derived != session_secret(Settings(**{**UNREACHABLE, "secret_key": "another"}))
    from_file = session_secret(Settings(**{**UNREACHABLE, "secret_key": None, "home": tmp_path}))
    assert (tmp_path / "secret.key").exists() and from_file != derived


def test_sparkline_scales_into_its_box_upwards():
    line = sparkline([(0.0, 0.0), (5.0, 100.0), (10.0, 50.0)], width=104, height=54)
    points = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert points == [(4.0, 50.0), (52.0, 4.0), (100.0, 27.0)]
    assert line.peak == 100.0 and line.span == 10.0
    assert sparkline([(0.0, 1.0)]) is None
