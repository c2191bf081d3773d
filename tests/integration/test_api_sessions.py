"""The request's database session when Postgres goes away between a request's last query and
its teardown (the chaos suite once saw a 500 on GET /v1/jobs while Postgres restarted)."""

from __future__ import annotations

import psycopg

from app.api import create_app
from app.api.context import context, db


def test_a_database_lost_before_teardown_neither_fails_the_answer_nor_leaks_the_session(stack):
    key = stack.create_key()
    app = create_app(stack.settings)
    admin_dsn = stack.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    killed = []

    @app.after_request
    def terminate_request_backend(response):
        """Kill the first request session's server process, as a Postgres restart would, after
        the view's query and before teardown closes (and rolls back) the session."""
        if not killed:
            pid = db().connection().connection.dbapi_connection.info.backend_pid
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)
        return response

    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    first = client.get("/v1/jobs", headers=headers)  # raised from teardown before the fix
    assert first.status_code == 200, first.data
    assert killed, "the hook did not kill the request's backend"
    with app.app_context():  # no session is left in the registry, under any app context
        assert context().request_sessions.registry.registry == {}

    for _ in range(3):  # later requests get working sessions
        answer = client.get("/v1/jobs", headers=headers)
        assert answer.status_code == 200, answer.data
    assert len(killed) == 1


def test_a_request_commits_once_after_its_handler_and_only_when_it_succeeds(stack):
    """The unit of work: a handler changes rows through `db()` and never commits; a success
    commits them, then runs the `on_commit` callbacks; an error (raised or answered) keeps
    nothing and publishes nothing."""
    import uuid

    from sqlalchemy import select

    from app.api.context import on_commit
    from app.api.responses import Response
    from app.errors import Conflict
    from app.orm import Tenant

    app = create_app(stack.settings)
    published = []

    def probe(outcome: str):
        name = f"uow-{outcome}-{uuid.uuid4().hex[:8]}"
        db().add(Tenant(name=name))
        db().flush()
        on_commit(lambda: published.append(name))
        if outcome == "raised":
            raise Conflict("changed my mind")
        return Response(name, status=409 if outcome == "answered" else 200)

    app.add_url_rule("/probe/<outcome>", view_func=probe, methods=["POST"])
    client = app.test_client()
    names = {}
    for outcome, status in (("ok", 200), ("raised", 409), ("answered", 409)):
        answer = client.post(f"/probe/{outcome}")
        assert answer.status_code == status, answer.data
        names[outcome] = answer.data.decode() if outcome != "raised" else None
    with stack.sessions() as session:
        stored = set(session.scalars(select(Tenant.name).where(Tenant.name.like("uow-%"))))
    assert stored == {names["ok"]}
    assert published == [names["ok"]]
