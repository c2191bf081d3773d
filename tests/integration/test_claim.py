"""The inline claim's cost follows the claim, not the history of finished jobs."""

import json

from sqlalchemy import text

from app.services.auth import authenticate
from app.services.jobs import submit_job
from workers.demo_models import digits_records, digits_split
from workers.executor import CLAIM, claim_jobs


def test_the_claim_skips_finished_jobs_old_row_versions(make_stack):
    """Every finished job leaves an old row version in `ix_jobs_active_lease` until vacuum
    (thousands a second under load). The claim must not read them: before, its search for
    expired leases made a bitmap scan fetch every one of those heap rows on each claim."""
    iso = make_stack()
    iso.kiln("models", "add-demo", "digits")
    key = iso.create_key("claim-tenant")
    _, x_test, _, _ = digits_split()
    record = digits_records(x_test[:1])
    with iso.sessions.begin() as session:
        caller = authenticate(session, f"Bearer {key}")
        finished = [submit_job(session, caller, model="digits", inputs=record)[0].id
                    for _ in range(1500)]
        # claimed (a lease), then ended: each step leaves a dead row version behind
        session.execute(text("UPDATE jobs SET status = 'running', lease_expires_at = now() "
                             "- interval '1 second' WHERE id = ANY(:ids)"), {"ids": finished})
        session.execute(text("UPDATE jobs SET status = 'succeeded', lease_expires_at = NULL "
                             "WHERE id = ANY(:ids)"), {"ids": finished})
        waiting = [submit_job(session, caller, model="digits", inputs=record)[0].id
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
        claimed = claim_jobs(session, waiting[0], max_jobs=256, row_budget=4096,
                             lease_seconds=60, max_attempts=3)
    assert {c.id for c in claimed} == set(waiting)
