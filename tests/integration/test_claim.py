"""The inline claim's cost follows the claim, not the history of finished jobs."""

import json

from sqlalchemy import text

from app.services.auth import authenticate
from app.services.commands import SubmitJob
from app.services.jobs import submit_job
from workers.demo_models import digits_records, digits_split
from app.store.jobs import CLAIM, claim_inline, lock_inline
from workers.inline import fits_one_transaction


def digits_stack(make_stack, tenant: str, records: int):
    """An isolated stack with the digits model, a tenant's key and `records` digit records."""
    iso = make_stack()
    iso.add_digits()
    key = iso.create_key(tenant)
    _, x_test, _, _ = digits_split()
    return iso, key, digits_records(x_test[:records])


def test_the_claim_skips_finished_jobs_old_row_versions(make_stack):
    """Every finished job leaves an old row version in `ix_jobs_active_lease` until vacuum
    (thousands a second under load). The claim must not read them: before, its search for
    expired leases made a bitmap scan fetch every one of those heap rows on each claim."""
    iso, key, record = digits_stack(make_stack, "claim-tenant", 1)
    with iso.sessions.begin() as session:
        caller = authenticate(session, f"Bearer {key}")
        finished = [submit_job(session, caller, SubmitJob(model="digits", inputs=record))[0].id
                    for _ in range(1500)]
        # claimed (a lease), then ended: each step leaves a dead row version behind
        session.execute(text("UPDATE jobs SET status = 'running', lease_expires_at = now() "
                             "- interval '1 second' WHERE id = ANY(:ids)"), {"ids": finished})
        session.execute(text("UPDATE jobs SET status = 'succeeded', lease_expires_at = NULL "
                             "WHERE id = ANY(:ids)"), {"ids": finished})
        waiting = [submit_job(session, caller, SubmitJob(model="digits", inputs=record))[0].id
                   for _ in range(8)]
    params = {"job_id": waiting[0], "max_jobs": 256, "row_budget": 4096, "lease_seconds": 60,
              "max_attempts": 3, "urgent_seconds": 600}
    blocks = []
    for _ in range(2):  # the first pass through an index marks the dead entries it meets
        with iso.sessions() as session:
            plan = session.execute(text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + CLAIM.text),
                                   params).scalar()
            session.rollback()
        assert "ix_jobs_active_lease" not in json.dumps(plan)
        blocks.append(plan[0]["Plan"]["Shared Hit Blocks"])
    assert blocks[1] < 200, blocks  # it was 787 here (and grew with every finished job)
    with iso.sessions.begin() as session:
        claimed = claim_inline(session, waiting[0], max_jobs=256, row_budget=4096,
                             lease_seconds=60, max_attempts=3)
    assert {c.id for c in claimed} == set(waiting)


def test_only_first_tries_are_fresh_and_only_small_fresh_claims_skip_the_lease(make_stack):
    """A job re-published by the reconciler (or leased before) is not fresh: a claim holding one
    is leased, so that a job that kills its worker is counted and given up on."""
    iso, key, records = digits_stack(make_stack, "fresh-tenant", 3)
    with iso.sessions.begin() as session:
        caller = authenticate(session, f"Bearer {key}")
        new, republished = (submit_job(session, caller, SubmitJob(model="digits", inputs=records))[0].id
                            for _ in range(2))
        session.execute(text("UPDATE jobs SET published_at = now() WHERE id = :id"),
                        {"id": republished})
    with iso.sessions.begin() as session:
        locked = {j.id: j for j in lock_inline(session, new, max_jobs=10, row_budget=100,
                                             max_attempts=3)}
        assert locked[new].fresh and not locked[republished].fresh
        assert locked[new].attempt == 1  # the attempt its writes will carry
        assert not fits_one_transaction(list(locked.values()), 100, redelivered=False)
        assert fits_one_transaction([locked[new]], 100, redelivered=False)
        assert not fits_one_transaction([locked[new]], 100, redelivered=True)
        assert not fits_one_transaction([locked[new]], 2, redelivered=False)  # 3 rows > 2
        session.rollback()
    with iso.sessions.begin() as session:  # a leased job is not fresh either
        claimed = claim_inline(session, new, max_jobs=1, row_budget=100, lease_seconds=60,
                             max_attempts=3)
        assert [j.id for j in claimed] == [new]
    with iso.sessions.begin() as session:
        session.execute(text("UPDATE jobs SET status = 'queued' WHERE id = :id"), {"id": new})
        again = lock_inline(session, new, max_jobs=1, row_budget=100, max_attempts=3)
        assert [(j.id, j.fresh, j.attempt) for j in again] == [(new, False, 2)]
