from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.migrate import alembic_config, downgrade, upgrade


def test_one_head(stack):
    script = ScriptDirectory.from_config(alembic_config(stack.settings))
    assert len(script.get_heads()) == 1


def test_upgrade_matches_models_and_downgrade_works(make_stack):
    fresh = make_stack()  # a copy of the template, made by `upgrade head` on an empty database
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


def test_db_wait_returns_once_the_schema_reaches_head(make_stack):
    """`kiln db wait` for an init container: it waits while the database is behind, and
    returns as soon as `kiln db upgrade` (run elsewhere) brings it to head."""
    import subprocess
    import time

    from tests import support

    fresh = make_stack()
    assert fresh.kiln("db", "wait", "--timeout", "5").stdout.strip().startswith("database at")
    downgrade(fresh.settings, "-1")
    behind = fresh.kiln("db", "wait", "--timeout", "1", check=False)
    assert behind.returncode == 1 and "this code needs" in behind.stderr, behind.stderr
    waiting = subprocess.Popen(support.kiln_command("db", "wait", "--timeout", "60"),
                               env=fresh.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(1.5)
    assert waiting.poll() is None, "it must keep waiting while the schema is behind"
    upgrade(fresh.settings)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert out.startswith("database at")


def test_db_wait_gives_up_on_an_unreachable_database(stack):
    from tests import support

    env = dict(stack.env, KILN_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{support.free_port()}/x")
    result = support.run_kiln(env, "db", "wait", "--timeout", "1", check=False)
    assert result.returncode == 1 and "unreachable" in result.stderr, result.stderr
