import pytest
from pydantic import ValidationError

from app.services.jobs import decode_cursor, request_fingerprint
from app.errors import BadRequest
from app.settings import Settings, kombu_url, sqlalchemy_url


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
    assert (settings.batch_size, settings.gpu_batch_size) == (1024, 4096)
    assert settings.max_running_chunks_per_tenant == 0  # no per-tenant limit unless asked
    monkeypatch.setenv("KILN_MAX_RUNNING_CHUNKS_PER_TENANT", "-1")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("KILN_MAX_RUNNING_CHUNKS_PER_TENANT", "2")
    monkeypatch.setenv("KILN_GPU_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


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


def test_foreign_cursors_are_a_bad_request():
    with pytest.raises(BadRequest):
        decode_cursor("not-a-cursor")
