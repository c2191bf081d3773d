"""Engine and session factories. The caller owns the session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import psycopg
import psycopg.types.json
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import tracing
from app.errors import InvalidInput
from app.settings import Settings

log = logging.getLogger(__name__)


def to_json(value) -> str:
    """JSONB values through orjson; a value it cannot encode (e.g. nested deeper than 254
    levels) is the caller's bad input, not a server error."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"a value cannot be stored as JSON: {exc}") from None


def make_engine(settings: Settings, *, name: str = "kiln", **kwargs) -> Engine:
    """An engine whose connections carry `name` as their Postgres application_name, so that
    `pg_stat_activity` tells an operator which of Kiln's processes holds each connection."""
    options = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10,
               "json_serializer": to_json,
               "json_deserializer": orjson.loads,
               "connect_args": {"application_name": name}}
    options.update(kwargs)
    # JSON that psycopg parses itself (jsonb in the rows of text() statements, e.g. a claim's
    # inputs) goes through orjson too: several times faster than the standard library.
    psycopg.types.json.set_json_loads(orjson.loads)
    engine = create_engine(settings.sqlalchemy_url, **options)
    tracing.instrument_engine(engine)  # nothing unless OTEL_* turned traces on
    return engine


def connect(engine: Engine, **kwargs) -> psycopg.Connection:
    """A psycopg connection of its own (outside the pool) to the engine's database."""
    args, options = engine.dialect.create_connect_args(engine.url)
    return psycopg.connect(*args, **{**options, **kwargs})


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session, one transaction: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


def close_quietly(session: Session) -> None:
    """Close a session whose work is done: its answer has been made or sent. Closing rolls back
    an open transaction, and when the database went away after the last query that rollback
    raises; the error is logged, not raised, so that it cannot turn a finished answer into a
    500 or cut off a streamed body."""
    try:
        session.close()
    except Exception as exc:  # noqa: BLE001 - nothing is left to undo; the pool drops the connection
        log.warning("closing a database session failed: %s", str(exc).splitlines()[0])
