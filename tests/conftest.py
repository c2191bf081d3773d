"""Fixtures: real Postgres and Redis (local when reachable, else embedded), real kiln processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.client import KilnClient
from app.db import make_engine, make_sessionmaker
from app.migrate import upgrade
from app.settings import Settings
from tests import support


@dataclass
class Services:
    admin_url: str
    redis_url: str
    home: Path
    template: str | None = None  # a database migrated to head once, copied for each stack

    def migrated_template(self) -> str:
        if self.template is None:
            name = f"kiln_template_{uuid.uuid4().hex[:10]}"
            url = support.create_database(self.admin_url, name)
            upgrade(support.settings_from_env(support.test_env({
                "KILN_DATABASE_URL": url, "KILN_REDIS_URL": self.redis_url})))
            self.template = name
        return self.template


@pytest.fixture(scope="session", autouse=True)
def demo_model_cache(tmp_path_factory):
    """`kiln models add-demo` caches its builds (workers/demo_cache.py): here for this session
    only, and in every process the tests start (support.test_env passes the environment on)."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def services():
    """Local Postgres and Redis when reachable; otherwise embedded ones (or when
    KILN_TEST_EMBEDDED=1). Their home is outside pytest's 0700 temp root, because pgserver runs
    Postgres as an unprivileged user when the tests run as root."""
    home = Path(tempfile.mkdtemp(prefix="kiln-services-"))
    home.chmod(0o755)
    force = os.environ.get("KILN_TEST_EMBEDDED") == "1"
    embedded = None
    if support.local_postgres_up() and not force:
        admin_url = support.LOCAL_POSTGRES
    else:
        from app.embedded import EmbeddedPostgres
        embedded_pg = EmbeddedPostgres(home)
        admin_url = embedded_pg.start()
        embedded = [embedded_pg]
    if support.local_redis_up() and not force:
        redis_url = f"{support.LOCAL_REDIS}/{support.redis_db()}"
    else:
        from app.embedded import EmbeddedRedis
        embedded_redis = EmbeddedRedis(home)
        redis_url = embedded_redis.start()
        embedded = (embedded or []) + [embedded_redis]
    services = Services(admin_url, redis_url, home)
    yield services
    if services.template:
        support.drop_database(admin_url, services.template)
    for server in embedded or []:
        server.stop()
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class Stack:
    """One isolated Kiln installation: its own database, queue and storage."""

    env: dict[str, str]
    settings: Settings
    logdir: Path

    @property
    def sessions(self):
        if not hasattr(self, "_sessions"):
            self._sessions = make_sessionmaker(make_engine(self.settings, pool_size=2))
        return self._sessions

    def kiln(self, *args: str, **kwargs):
        return support.run_kiln(self.env, *args, **kwargs)

    def create_key(self, tenant: str | None = None) -> str:
        """A new API key, made in-process by the same service `kiln keys create` calls (the
        CLI itself is tested in tests/integration/test_cli.py)."""
        from app.services.auth import create_key

        with self.sessions.begin() as session:
            return create_key(session, tenant or f"t-{uuid.uuid4().hex[:8]}")[1]

    def add_digits(self) -> None:
        """Register the built-in `digits` model as `kiln models add-demo digits` does, from a
        model built once per test session (the command itself is tested through `kiln up`)."""
        from app.services.models import register_model
        from app.storage import Storage

        built = support.digits_model()
        with self.sessions.begin() as session:
            register_model(session, Storage(self.settings.resolved_storage_url), name=built.name,
                           artifact=built.artifact, signature=built.signature,
                           processing=built.processing, metrics=built.metrics,
                           provenance=built.provenance)


def build_stack(services: Services, tmp: Path, **overrides: str) -> tuple[Stack, str]:
    """A stack on a copy of the migrated template (what `upgrade head` on an empty database
    makes: tests/integration/test_migrations.py runs that itself)."""
    name = f"kiln_test_{uuid.uuid4().hex[:10]}"
    database_url = support.create_database(services.admin_url, name,
                                           template=services.migrated_template())
    env = support.test_env({
        "KILN_DATABASE_URL": database_url, "KILN_REDIS_URL": services.redis_url,
        "KILN_HOME": str(tmp), "KILN_QUEUE": f"q-{name}", "KILN_LEASE_SECONDS": "2",
        "KILN_RECONCILE_INTERVAL_SECONDS": "0.5", "KILN_QUEUED_GRACE_SECONDS": "2",
        # one API process: a test about several (limits, metrics) asks for two
        "KILN_WORKER_CONCURRENCY": "2", "KILN_API_WORKERS": "1", "KILN_LOG_LEVEL": "INFO",
        **overrides})
    return Stack(env, support.settings_from_env(env), tmp), name


def api_only_stack(services: Services, tmp: Path, **overrides: str):
    """A module's stack with the digits model and an API, no worker (a test starts one when it
    wants jobs to run), as `yield from` in a fixture: the stack has `api_url`."""
    built, name = build_stack(services, tmp, **overrides)
    built.add_digits()
    api = support.start_api(built.env, built.logdir)
    built.api_url = api.url
    yield built
    api.stop()
    support.drop_database(services.admin_url, name)


@pytest.fixture(scope="session")
def stack(services, tmp_path_factory):
    """The shared stack, with the digits model registered."""
    built, name = build_stack(services, tmp_path_factory.mktemp("stack"))
    built.add_digits()
    yield built
    support.drop_database(services.admin_url, name)


@pytest.fixture
def make_stack(services, tmp_path_factory):
    """Factory for an isolated stack, for tests that need an idle queue or odd settings."""
    created = []

    def make(**overrides: str) -> Stack:
        built, name = build_stack(services, tmp_path_factory.mktemp("iso"), **overrides)
        created.append(name)
        return built

    yield make
    for name in created:
        support.drop_database(services.admin_url, name)


@pytest.fixture(scope="session")
def processes(stack):
    """The shared stack's API and worker, started together (each takes seconds)."""
    api, worker = support.start_api_and_worker(stack.env, stack.logdir)
    yield api, worker
    worker.stop()
    api.stop()


@pytest.fixture(scope="session")
def api(processes):
    return processes[0]


@pytest.fixture(scope="session")
def worker(processes):
    return processes[1]


@pytest.fixture
def api_key(stack) -> str:
    return stack.create_key()


@pytest.fixture
def client(api, worker, api_key):
    kiln = KilnClient(api.url, api_key)
    yield kiln
    kiln.close()
