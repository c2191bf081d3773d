"""The OpenAI dialect's state of a batch, kept in its job's `options["openai"]` (no column of
its own): read under the job's row lock, and merged in one statement."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

LOCK = text("SELECT options->'openai' FROM jobs WHERE id = :id FOR UPDATE")
MERGE = text("""
UPDATE jobs SET options = jsonb_set(options, '{openai}',
                                    coalesce(options->'openai', '{}'::jsonb) || CAST(:state AS jsonb))
WHERE id = :id
""")


def lock_state(session: Session, job_id: uuid.UUID) -> dict[str, Any]:
    """The batch's dialect state, its job row locked until the transaction ends."""
    return session.execute(LOCK, {"id": job_id}).scalar_one() or {}


def merge_state(session: Session, job_id: uuid.UUID, state: dict[str, Any]) -> None:
    """Add `state`'s keys to the batch's dialect state."""
    session.execute(MERGE, {"id": job_id, "state": orjson.dumps(state).decode()})
