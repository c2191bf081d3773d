"""Fair share: claims interleave tenants, and a tenant's file jobs share its chunk limit."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app.client import KilnClient
from app.orm import Job, JobChunk, Model, Tenant
from tests.integration.test_file_faults import rows_with_ids, submit
from tests.integration.test_files import to_jsonl, upload
from tests.integration.test_workers import register_slow_model, slow_records
from tests.support import start_api, start_api_and_worker, start_worker
from app.store.chunks import dispatch_chunks
from app.store.jobs import claim_inline
from workers.reconciler import reconcile_once

CLAIM = {"lease_seconds": 30, "max_attempts": 3, "urgent_seconds": 600}


@pytest.fixture
def db(make_stack):
    """An isolated database with one model and no processes."""
    iso = make_stack()
    name = f"fair-{uuid.uuid4().hex[:6]}"
    register_slow_model(iso, name, hidden=8, layers=1)
    with iso.sessions() as session:
        model = session.scalars(select(Model).where(Model.name == name)).one()
        session.expunge(model)
    return iso, model


def tenant(session) -> Tenant:
    row = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
    session.add(row)
    session.flush()
    return row


def queue_inline(session, owner: Tenant, model: Model, n: int, *, rows: int = 1,
                 priority: int = 0, start: datetime | None = None,
                 expires_in: timedelta = timedelta(days=1)) -> list[uuid.UUID]:
    """`n` queued jobs, one millisecond apart, as if submitted in that order."""
    start = start or datetime.now(UTC)
    submitted = [start + timedelta(milliseconds=i) for i in range(n)]
    jobs = [Job(tenant_id=owner.id, model_id=model.id, model_name=model.name, kind="inline",
                status="queued", priority=priority, total_count=rows, inputs=[{}] * rows,
                options={"queue": "cpu"}, created_at=at, expires_at=at + expires_in)
            for at in submitted]
    session.add_all(jobs)
    session.flush()
    return [job.id for job in jobs]


def test_a_claim_takes_turns_between_tenants(db):
    iso, model = db
    start = datetime.now(UTC) - timedelta(minutes=1)
    with iso.sessions.begin() as session:
        flooder, other, big = tenant(session), tenant(session), tenant(session)
        flood = queue_inline(session, flooder, model, 500, start=start)
        late = queue_inline(session, other, model, 3, start=start + timedelta(seconds=10))
        bulky = queue_inline(session, big, model, 2, rows=6, start=start + timedelta(seconds=20))
    with iso.sessions.begin() as session:
        claimed = [j.id for j in claim_inline(session, flood[0], max_jobs=12, row_budget=1000,
                                            **CLAIM)]
    # The job the message named, then the tenants in turn by the rows each has had so far (the
    # bulky tenant's 6-row job waits for the flooder's sixth row): first come, first served
    # would have claimed twelve of the flood.
    assert claimed == [flood[0], late[0], flood[1], late[1], flood[2], late[2], flood[3],
                       flood[4], flood[5], bulky[0], flood[6], flood[7]]
    with iso.sessions() as session:
        assert session.scalar(select(func.count()).where(Job.status == "running")) == 12


def test_deadline_and_priority_come_before_turns(db):
    iso, model = db
    start = datetime.now(UTC) - timedelta(minutes=1)
    with iso.sessions.begin() as session:
        flooder, other = tenant(session), tenant(session)
        flood = queue_inline(session, flooder, model, 300, start=start)
        urgent = queue_inline(session, flooder, model, 1, start=start + timedelta(seconds=5),
                              expires_in=timedelta(minutes=2))
        important = queue_inline(session, other, model, 1, priority=5,
                                 start=start + timedelta(seconds=6))
        queue_inline(session, other, model, 5, start=start + timedelta(seconds=7))
    with iso.sessions.begin() as session:
        claimed = [j.id for j in claim_inline(session, flood[0], max_jobs=4, row_budget=1000,
                                            **CLAIM)]
    assert claimed[:3] == [flood[0], urgent[0], important[0]]


def test_claims_fill_up_to_the_row_budget_in_turn_order(db):
    iso, model = db
    with iso.sessions.begin() as session:
        first, second = tenant(session), tenant(session)
        mine = queue_inline(session, first, model, 50, rows=10)
        theirs = queue_inline(session, second, model, 50, rows=10)
    with iso.sessions.begin() as session:
        claimed = [j.id for j in claim_inline(session, mine[0], max_jobs=50, row_budget=100, **CLAIM)]
    assert len(claimed) == 10 and sum(j in theirs for j in claimed) == 5


def file_job(session, owner: Tenant, model: Model, chunks: int, age_seconds: float = 0,
             status: str = "running") -> uuid.UUID:
    job = Job(tenant_id=owner.id, model_id=model.id, model_name=model.name, kind="file",
              status=status, total_count=chunks * 10, options={"queue": "files"},
              created_at=datetime.now(UTC) - timedelta(seconds=age_seconds))
    session.add(job)
    session.flush()
    session.add_all(JobChunk(job_id=job.id, index=i, tenant_id=owner.id, start_row=i * 10,
                             end_row=i * 10 + 10) for i in range(chunks))
    session.flush()
    return job.id


def dispatch(iso, owner_id, **limits) -> list[tuple]:
    with iso.sessions.begin() as session:
        return dispatch_chunks(session, owner_id, grace_seconds=60,
                               **{"job_window": 4, "tenant_limit": 0, **limits})


def finish(iso, job_id, index) -> None:
    with iso.sessions.begin() as session:
        session.execute(text("UPDATE job_chunks SET status = 'succeeded', lease_expires_at = NULL"
                             " WHERE job_id = :j AND index = :i"), {"j": job_id, "i": index})


def test_a_tenants_chunk_limit_spans_its_jobs_and_slots_go_round(db):
    iso, model = db
    with iso.sessions.begin() as session:
        owner, other = tenant(session), tenant(session)
        first, second = file_job(session, owner, model, 6, 2), file_job(session, owner, model, 6, 1)
        ended = file_job(session, owner, model, 3, status="expired")  # its chunks hold no slot
        theirs = file_job(session, other, model, 6)
        owner_id, other_id = owner.id, other.id
    with iso.sessions.begin() as session:  # an ended job's abandoned chunk
        session.execute(text("UPDATE job_chunks SET status = 'running' WHERE job_id = :j"),
                        {"j": ended})
    assert dispatch(iso, owner_id, tenant_limit=3) == sorted(
        [(first, 0, "files"), (first, 1, "files"), (second, 0, "files")])
    assert dispatch(iso, owner_id, tenant_limit=3) == []  # at the limit: the rest are held
    finish(iso, second, 0)
    # The freed slot goes to the job with the fewest chunks in flight, though it is younger.
    assert dispatch(iso, owner_id, tenant_limit=3) == [(second, 1, "files")]
    # The reconciler neither republishes held chunks nor exceeds the limit; another tenant's
    # chunks are not held back by this one's.
    with iso.sessions.begin() as session:
        report = reconcile_once(session, max_attempts=3, grace_seconds=60, chunk_window=4,
                                tenant_chunk_limit=3)
    assert sorted(report.chunks) == sorted((theirs, i, "files") for i in range(3))
    finish(iso, first, 0)
    with iso.sessions.begin() as session:
        report = reconcile_once(session, max_attempts=3, grace_seconds=60, chunk_window=4,
                                tenant_chunk_limit=3)
    assert report.chunks == [(first, 2, "files")]
    assert dispatch(iso, other_id, tenant_limit=3) == []
    # With no tenant limit, each job fills its own window.
    assert dispatch(iso, owner_id) == sorted(
        [(first, 3, "files"), (first, 4, "files"),
         (second, 2, "files"), (second, 3, "files"), (second, 4, "files")])


def test_one_tenants_flood_of_small_jobs_does_not_delay_another_tenants_job(make_stack):
    iso = make_stack(KILN_WORKER_CONCURRENCY="1", KILN_TUNING__MAX_JOBS_PER_CLAIM="16")
    model = f"slow-{uuid.uuid4().hex[:6]}"
    register_slow_model(iso, model)
    api = start_api(iso.env, iso.logdir)
    flooder = KilnClient(api.url, iso.create_key())
    other = KilnClient(api.url, iso.create_key())
    try:
        records = slow_records(1)
        with ThreadPoolExecutor(8) as pool:  # queued while no worker runs
            flood = list(pool.map(lambda _: flooder.submit(model, records)["id"], range(240)))
        late = other.submit(model, records)["id"]
        worker = start_worker(iso.env, iso.logdir)
        try:
            assert other.wait(late, timeout_seconds=60)["status"] == "succeeded"
            for job_id in flood:
                assert flooder.wait(job_id, timeout_seconds=120)["status"] == "succeeded"
        finally:
            worker.stop()
        with iso.sessions() as session:
            finished = dict(session.execute(select(Job.id, Job.finished_at)).all())
        ahead = sum(finished[uuid.UUID(j)] < finished[uuid.UUID(late)] for j in flood)
        print(f"\n{ahead} of the flood's 240 jobs finished before the other tenant's job")
        # It rode in the first claim (16 jobs); first come, first served would put it last.
        assert ahead < 16
    finally:
        api.stop()


def test_a_tenants_file_jobs_never_exceed_its_chunk_limit(make_stack):
    iso = make_stack(KILN_TUNING__CHUNK_ROWS="500", KILN_TUNING__BATCH_SIZE="100", KILN_WORKER_CONCURRENCY="4",
                     KILN_MAX_RUNNING_CHUNKS_PER_TENANT="2")
    model = f"slow-{uuid.uuid4().hex[:6]}"
    register_slow_model(iso, model)
    api, worker = start_api_and_worker(iso.env, iso.logdir)
    client = KilnClient(api.url, iso.create_key())
    try:
        jobs = [submit(client, model, upload(client, f"big{i}.jsonl",
                                             to_jsonl(rows_with_ids(3000)))["id"])["id"]
                for i in range(2)]
        ids = [uuid.UUID(j) for j in jobs]
        samples, done = [], threading.Event()

        def sample() -> None:
            while not done.is_set():
                with iso.sessions() as session:
                    samples.append(session.execute(text("""
                        SELECT count(*) FILTER (WHERE status = 'running') AS running,
                               count(*) FILTER (WHERE status = 'running'
                                                OR lease_expires_at IS NOT NULL) AS in_flight,
                               count(DISTINCT job_id) FILTER (WHERE status = 'running') AS jobs
                        FROM job_chunks WHERE job_id = ANY(:ids) AND status IN ('queued', 'running')
                    """), {"ids": ids}).one())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            finished = [client.wait(j, timeout_seconds=240) for j in jobs]
        finally:
            done.set()
            sampler.join()
        for job in finished:
            assert job["status"] == "succeeded", job
            assert job["request_counts"] == {"total": 3000, "completed": 3000, "failed": 0}
        assert len(samples) > 20
        assert max(s.running for s in samples) == 2  # 4 children, 12 chunks: the limit binds
        assert max(s.in_flight for s in samples) <= 2
        assert max(s.jobs for s in samples) == 2, "the second job waited for the first to end"
    finally:
        client.close()
        worker.stop()
        api.stop()
