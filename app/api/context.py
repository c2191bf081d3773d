"""Per-app dependencies and the per-request session and caller."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from app.queueing import Publisher
from app.services.auth import Caller, authenticate
from app.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    sessions: sessionmaker[Session]
    publisher: Publisher


def context() -> ApiContext:
    return current_app.extensions["kiln"]


def db() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = context().sessions()
    return g.db


def caller() -> Caller:
    if "caller" not in g:
        g.caller = authenticate(db(), request.headers.get("Authorization"))
    return g.caller


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()
