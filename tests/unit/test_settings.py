import pytest
from pydantic import ValidationError

from app.services.jobs import request_fingerprint
from app.settings import Settings, Tuning, kombu_url, sqlalchemy_url


def test_plain_postgres_urls_get_the_psycopg_driver():
    assert sqlalchemy_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ValueError):
        sqlalchemy_url("mysql://u@h/db")


def test_redis_unix_sockets_are_spelled_for_kombu():
    assert kombu_url("unix:///tmp/r.sock") == "redis+socket:///tmp/r.sock"
    assert kombu_url("redis://h:6379/2") == "redis://h:6379/2"


def test_settings_come_from_kiln_environment(monkeypatch):
    monkeypatch.setenv("KILN_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("KILN_DATABASE_URL", "postgresql://u@h/db")
    settings = Settings()
    assert settings.max_attempts == 7
    assert settings.sqlalchemy_url == "postgresql+psycopg://u@h/db"


def test_bad_settings_fail_fast(monkeypatch):
    monkeypatch.setenv("KILN_MAX_ATTEMPTS", "0")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("KILN_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("KILN_DATABASE_URL", "mysql://u@h/db")
    with pytest.raises(ValidationError):
        Settings()


def test_batch_sizes_and_the_tenant_chunk_limit(monkeypatch):
    settings = Settings()
    assert (settings.tuning.batch_size, settings.tuning.gpu_batch_size) == (1024, 4096)
    assert settings.max_running_chunks_per_tenant == 0  # no per-tenant limit unless asked
    monkeypatch.setenv("KILN_MAX_RUNNING_CHUNKS_PER_TENANT", "-1")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("KILN_MAX_RUNNING_CHUNKS_PER_TENANT", "2")
    monkeypatch.setenv("KILN_TUNING__GPU_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_tuning_knobs_are_nested(monkeypatch):
    monkeypatch.setenv("KILN_TUNING__BATCH_SIZE", "512")
    monkeypatch.setenv("KILN_TUNING__QUIET_SECONDS", "0.01")
    tuning = Settings().tuning
    assert (tuning.batch_size, tuning.quiet_seconds) == (512, 0.01)
    assert tuning.chunk_rows == Tuning().chunk_rows  # the knobs not set keep their defaults


@pytest.mark.parametrize("name, value", [("BATCH_SIZE", "0"), ("MAX_JOBS_PER_CLAIM", "0"),
                                         ("CLAIM_ROW_BUDGET_BATCHES", "0"), ("DRAIN_SECONDS", "0"),
                                         ("GROUP_COMMIT_WAIT_MS", "-1"), ("CPU_POLICY", "fifo")])
def test_bad_tuning_fails_fast(monkeypatch, name, value):
    monkeypatch.setenv(f"KILN_TUNING__{name}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_old_flat_tuning_names_still_work_and_warn(monkeypatch):
    monkeypatch.setenv("KILN_CHUNK_ROWS", "400")
    with pytest.warns(FutureWarning, match="set KILN_TUNING__CHUNK_ROWS instead"):
        assert Settings().tuning.chunk_rows == 400
    monkeypatch.delenv("KILN_CHUNK_ROWS")
    with pytest.warns(FutureWarning, match="KILN_TUNING__BATCH_SIZE"):
        assert Settings(batch_size=64).tuning.batch_size == 64
    monkeypatch.setenv("KILN_BATCH_SIZE", "0")
    with pytest.warns(FutureWarning), pytest.raises(ValidationError):
        Settings()  # an old name is validated like the new one


def test_the_nested_name_wins_over_the_old_one(monkeypatch):
    monkeypatch.setenv("KILN_BATCH_SIZE", "64")
    monkeypatch.setenv("KILN_TUNING__BATCH_SIZE", "128")
    monkeypatch.setenv("KILN_TUNING__CHUNK_ROWS", "900")
    with pytest.warns(FutureWarning, match="KILN_TUNING__BATCH_SIZE"):
        tuning = Settings().tuning
    assert (tuning.batch_size, tuning.chunk_rows) == (128, 900)


def test_no_warning_without_old_names(monkeypatch, recwarn):
    monkeypatch.setenv("KILN_TUNING__BATCH_SIZE", "128")
    Settings()
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_embedded_services_fill_unset_urls(tmp_path):
    (tmp_path / "services.json").write_text(
        '{"database_url": "postgresql://p@/postgres?host=/s", "redis_url": "unix:///r.sock"}')
    settings = Settings(home=tmp_path).with_embedded()
    assert settings.redis_url == "unix:///r.sock"
    assert settings.broker_url == "redis+socket:///r.sock"
    explicit = Settings(home=tmp_path, redis_url="redis://x:1/0").with_embedded()
    assert explicit.redis_url == "redis://x:1/0"


def test_fingerprint_ignores_key_order_but_not_values():
    assert request_fingerprint({"a": 1, "b": 2}) == request_fingerprint({"b": 2, "a": 1})
    assert request_fingerprint({"a": 1}) != request_fingerprint({"a": 2})

