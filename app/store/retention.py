"""Retention in the store: results that expire, uploads that expire, deleted jobs, and the
bytes they leave to remove.

A job's results are forgotten in one transaction: the job says `results_expired_at` (and, for a
delete, `deleted_at`), its result rows, output files and part references are gone, and the
storage URIs of those bytes are written to `storage_garbage`. The bytes are removed only after
that commit (`collect_garbage`), and a garbage row is deleted only after its bytes are. So a
sweeper killed at any point leaves no job that claims results it no longer has: at worst bytes
nobody claims, which the next pass removes. Every selection is bounded and `SKIP LOCKED`, so
every worker can sweep at once, each taking different rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.orm import LIVE_STATUSES

DUE_RESULTS = text("""
WITH due AS (
    SELECT id, output_file_id, error_file_id FROM jobs
    WHERE results_expire_at < now() AND results_expired_at IS NULL
    ORDER BY results_expire_at LIMIT :limit
    FOR UPDATE SKIP LOCKED)
UPDATE jobs j SET results_expired_at = now(), output_file_id = NULL, error_file_id = NULL,
    inputs = NULL
FROM due WHERE j.id = due.id
RETURNING j.id, due.output_file_id, due.error_file_id
""")

DELETE_JOB = text("""
WITH target AS (
    SELECT id, output_file_id, error_file_id FROM jobs
    WHERE id = :job_id AND deleted_at IS NULL FOR UPDATE)
UPDATE jobs j SET deleted_at = now(), results_expired_at = coalesce(j.results_expired_at, now()),
    output_file_id = NULL, error_file_id = NULL, inputs = NULL
FROM target WHERE j.id = target.id
RETURNING j.id, target.output_file_id, target.error_file_id
""")

GARBAGE_OF_JOBS = text("""
INSERT INTO storage_garbage (uri)
SELECT uri FROM (
    SELECT output_uri AS uri FROM job_chunks WHERE job_id = ANY(:job_ids)
    UNION ALL SELECT error_uri FROM job_chunks WHERE job_id = ANY(:job_ids)
    UNION ALL SELECT uri FROM files WHERE id = ANY(:file_ids)
    UNION ALL SELECT regexp_replace(output_uri, '\\.arrow$', '.csv') FROM job_chunks
        WHERE job_id = ANY(:job_ids) AND output_uri LIKE '%.arrow'
    UNION ALL SELECT options->>'decoded_uri' FROM jobs WHERE id = ANY(:job_ids)
    -- the job's parts folder (a trailing /: removed whole), with any part of an attempt that
    -- was killed before it could remove its own (in any order: a removal of what is gone is a
    -- no-op)
    UNION ALL SELECT * FROM (SELECT DISTINCT regexp_replace(coalesce(output_uri, error_uri),
                                                            '/parts/[^/]+$', '/parts/')
        FROM job_chunks WHERE job_id = ANY(:job_ids)
          AND coalesce(output_uri, error_uri) ~ '/parts/[^/]+$') folders) u
WHERE uri IS NOT NULL
""")

FORGET_PARTS = text("""
UPDATE job_chunks SET output_uri = NULL, error_uri = NULL
WHERE job_id = ANY(:job_ids) AND (output_uri IS NOT NULL OR error_uri IS NOT NULL)
""")

DELETE_RESULTS = text("DELETE FROM job_results WHERE job_id = ANY(:job_ids)")

# A file no live job reads: any job's reference to it goes with it (as `DELETE /v1/files`).
FORGET_FILES = text("""
WITH gone AS (SELECT unnest(CAST(:file_ids AS uuid[])) AS id)
UPDATE jobs SET input_file_id = CASE WHEN input_file_id IN (SELECT id FROM gone) THEN NULL
                                     ELSE input_file_id END,
                output_file_id = CASE WHEN output_file_id IN (SELECT id FROM gone) THEN NULL
                                      ELSE output_file_id END,
                error_file_id = CASE WHEN error_file_id IN (SELECT id FROM gone) THEN NULL
                                     ELSE error_file_id END
WHERE input_file_id = ANY(:file_ids) OR output_file_id = ANY(:file_ids)
   OR error_file_id = ANY(:file_ids)
""")

DELETE_FILES = text("DELETE FROM files WHERE id = ANY(:file_ids)")

DUE_FILES = text(f"""
SELECT f.id FROM files f
WHERE f.expires_at < now()
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.input_file_id = f.id AND j.status IN ({LIVE_STATUSES}))
ORDER BY f.expires_at LIMIT :limit
FOR UPDATE OF f SKIP LOCKED
""")

TAKE_GARBAGE = text("""
SELECT id, uri FROM storage_garbage ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
""")

DROP_GARBAGE = text("DELETE FROM storage_garbage WHERE id = ANY(:ids)")


def _drop_results(session: Session, rows: Sequence) -> list[uuid.UUID]:
    """Forget the results of jobs already marked expired: rows, part and output files (their
    URIs to the garbage, removed after commit)."""
    job_ids = [row.id for row in rows]
    file_ids = [f for row in rows for f in (row.output_file_id, row.error_file_id) if f]
    if job_ids:
        params = {"job_ids": job_ids, "file_ids": file_ids}
        session.execute(GARBAGE_OF_JOBS, params)
        session.execute(FORGET_PARTS, params)
        session.execute(DELETE_RESULTS, params)
        if file_ids:
            session.execute(FORGET_FILES, params)
            session.execute(DELETE_FILES, params)
    return job_ids


def expire_results(session: Session, limit: int) -> list[uuid.UUID]:
    """Up to `limit` jobs whose results are past `results_expire_at` lose them; the jobs keep
    their counts and usage, and say `results_expired`."""
    return _drop_results(session, session.execute(DUE_RESULTS, {"limit": limit}).all())


def delete_job(session: Session, job_id: uuid.UUID) -> bool:
    """A (terminal) job's tombstone: its results, part and output files and inputs go; its row
    stays, with its counts and usage, for audit. False if it was already deleted."""
    return bool(_drop_results(session, session.execute(DELETE_JOB, {"job_id": job_id}).all()))


def expire_files(session: Session, limit: int) -> list[uuid.UUID]:
    """Up to `limit` files past `expires_at` that no live job reads are deleted (their bytes to
    the garbage); jobs that named them no longer do."""
    file_ids = [row.id for row in session.execute(DUE_FILES, {"limit": limit})]
    if file_ids:
        params = {"file_ids": file_ids, "job_ids": []}
        session.execute(GARBAGE_OF_JOBS, params)
        session.execute(FORGET_FILES, params)
        session.execute(DELETE_FILES, params)
    return file_ids


def collect_garbage(session: Session, remove: Callable[[str], None], limit: int) -> int:
    """Remove the bytes of up to `limit` forgotten URIs, then their garbage rows (in the
    caller's transaction: a pass killed midway leaves them for the next)."""
    rows = session.execute(TAKE_GARBAGE, {"limit": limit}).all()
    for row in rows:
        remove(row.uri)
    if rows:
        session.execute(DROP_GARBAGE, {"ids": [row.id for row in rows]})
    return len(rows)
