from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.migrate import alembic_config, downgrade, upgrade


def test_one_head(stack):
    script = ScriptDirectory.from_config(alembic_config(stack.settings))
    assert len(script.get_heads()) == 1


def test_upgrade_matches_models_and_downgrade_works(make_stack):
    fresh = make_stack()  # build_stack has already run `upgrade head` on an empty database
    config = alembic_config(fresh.settings)
    command.check(config)  # raises when the models and the migrations drift
    with fresh.sessions() as session:
        tables = set(inspect(session.get_bind()).get_table_names())
    assert {"tenants", "api_keys", "models", "files", "jobs", "job_results", "job_chunks",
            "webhook_deliveries"} <= tables
    downgrade(fresh.settings, "base")
    with fresh.sessions() as session:
        assert set(inspect(session.get_bind()).get_table_names()) <= {"alembic_version"}
    upgrade(fresh.settings)
    command.check(config)


def test_the_jobs_that_reference_a_file_or_a_parent_are_found_by_index(stack):
    """Deleting a file clears these columns and checks their foreign keys: without an index
    each is a scan of every job. Seq scans are disabled so the plan shows whether one exists."""
    from sqlalchemy import text

    with stack.sessions() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        for column in ("input_file_id", "output_file_id", "error_file_id", "parent_id"):
            plan = "\n".join(session.execute(text(
                f"EXPLAIN UPDATE jobs SET {column} = NULL "
                f"WHERE {column} = '00000000-0000-0000-0000-000000000000'")).scalars())
            assert f"ix_jobs_{column}" in plan, plan
        session.rollback()
