"""Engine and session factories. The caller owns the session."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import orjson
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings


def make_engine(settings: Settings, **kwargs) -> Engine:
    options = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10,
               "json_serializer": lambda value: orjson.dumps(value).decode(),
               "json_deserializer": orjson.loads}
    options.update(kwargs)
    return create_engine(settings.sqlalchemy_url, **options)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session, one transaction: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session
