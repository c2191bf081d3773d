"""The `kiln` console script: the control-plane CLI plus the commands that need workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click
import orjson
from celery import signals

from app.cli import cli, err, sessions, settings_from
from app.cpus import apply_cpu_policy, cpus
from app.cli.models import models as models_group
from app.settings import Settings


def add_demo_model(settings: Settings, name: str, *, only_if_missing: bool = False) -> str:
    """Build a demo model offline and register it as a built-in model."""
    from app.services.models import builtin_exists, register_model
    from app.storage import Storage
    from workers.demo_models import BUILDERS

    if name not in BUILDERS:
        raise click.ClickException(f"no demo model {name!r}; choose from {sorted(BUILDERS)}")
    factory = sessions(settings)
    with factory() as session:
        if only_if_missing and builtin_exists(session, name):
            return f"{name}: already registered"
    built = BUILDERS[name]()
    with factory.begin() as session:
        model = register_model(session, Storage(settings.resolved_storage_url), name=built.name,
                               artifact=built.artifact, signature=built.signature,
                               processing=built.processing, metrics=built.metrics,
                               provenance=built.provenance)
        return f"{model.name} v{model.version} registered {built.metrics}"


@models_group.command("add-demo")
@click.argument("name", type=click.Choice(["digits", "minilm"]))
@click.pass_context
def models_add_demo(ctx: click.Context, name: str) -> None:
    """Build a built-in demo model offline and register it."""
    click.echo(add_demo_model(settings_from(ctx), name))


@models_group.command("optimize")
@click.argument("name")
@click.option("--variant", "variants", type=click.Choice(["int8", "fp16", "graph"]),
              multiple=True, required=True, help="Repeat to build several.")
@click.option("--version", type=int, default=None, help="Default: the newest version.")
@click.option("--tenant", default=None, help="Whose model (tenant name); default: the built-in one.")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSONL or JSON array of records to compare fp32 and the variant on.")
@click.option("--label-field", default=None, help="Field of --sample holding the true class.")
@click.option("--make-default", is_flag=True, help="Jobs that name no variant get this one.")
@click.pass_context
def models_optimize(ctx: click.Context, name: str, variants: tuple[str, ...], version: int | None,
                    tenant: str | None, sample: Path | None, label_field: str | None,
                    make_default: bool) -> None:
    """Build optimised variants (ORT graph optimisation, int8, fp16), measure them against
    fp32 and register them as rows of the same name and version."""
    from app.errors import KilnError
    from app.storage import Storage
    from workers.optimize import optimize_model, read_sample

    settings = settings_from(ctx)
    try:
        records = read_sample(sample, label_field) if sample else None
        for variant in variants:
            built = optimize_model(sessions(settings), Storage(settings.resolved_storage_url),
                                   name, variant, tenant=tenant, version=version, sample=records,
                                   threads=settings.ort_threads, make_default=make_default)
            click.echo(f"{built['name']} v{built['version']} {built['variant']} registered "
                       f"{orjson.dumps(built['metrics']).decode()}")
    except KilnError as exc:
        raise click.ClickException(exc.detail) from None


def configure_logging(level: str, fmt: str = "text") -> None:
    """Kiln's format for every logger; with json, Celery's too (it then leaves logging alone)."""
    from app.logs import configure

    configure(level, fmt)
    if fmt == "json":
        signals.setup_logging.connect(lambda **_: configure(level, fmt), weak=False)


def configure_tracing() -> None:
    """Each prefork child starts its own tracer (OTEL_* variables) and flushes it on exit."""
    from app import tracing

    signals.worker_process_init.connect(lambda **_: tracing.configure("kiln-worker"), weak=False)
    signals.worker_process_shutdown.connect(lambda **_: tracing.flush(), weak=False)


@cli.command()
@click.option("--queues", "-Q", default=None, help="Queues to consume (default $KILN_QUEUE).")
@click.option("--concurrency", "-c", type=int, default=None, help="Prefork children.")
@click.option("--no-reconciler", is_flag=True,
              help="Do not run the reconciler loop and the webhook dispatcher here.")
@click.pass_context
def worker(ctx: click.Context, queues: str | None, concurrency: int | None,
           no_reconciler: bool) -> None:
    """Run a Celery worker (and the reconciler loop)."""
    from workers.celery_app import create_celery
    from workers.runtime.onnx import check_cuda_active

    settings: Settings = settings_from(ctx)
    queues = queues or settings.queue
    require_gpu = settings.gpu_queue in queues.split(",")
    if require_gpu:
        try:
            check_cuda_active()
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    concurrency = concurrency or settings.effective_concurrency
    settings = settings.model_copy(update={"worker_concurrency": concurrency})
    threads = settings.ort_threads or max(1, cpus() // concurrency)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing()
    apply_cpu_policy(settings.tuning.cpu_policy)  # inherited by the prefork children and their threads
    celery = create_celery(settings, require_gpu=require_gpu)

    if not no_reconciler:
        @signals.worker_ready.connect(weak=False)
        def start_reconciler(**_kwargs) -> None:
            from workers.context import worker_context
            from workers.reconciler import ReconcilerThread
            from workers.webhooks import WebhookDispatcher

            context = worker_context(settings)
            ReconcilerThread(context.sessions, context.publisher,
                             interval_seconds=settings.reconcile_interval_seconds,
                             max_attempts=settings.max_attempts,
                             grace_seconds=settings.queued_grace_seconds,
                             chunk_window=settings.max_running_chunks_per_job,
                             tenant_chunk_limit=settings.max_running_chunks_per_tenant,
                             sweep_batch=settings.sweep_batch).start()
            WebhookDispatcher(settings).start()

    from workers.metrics_server import worker_metrics

    with worker_metrics(settings):
        celery.worker_main([*(["--quiet"] if settings.log_format == "json" else []),
                            "worker", "-Q", queues, "-c", str(concurrency), "-P", "prefork",
                            "--loglevel", settings.log_level, "--without-gossip",
                            "--without-mingle", "--hostname", f"kiln-{queues}-{os.getpid()}@%h"])


@cli.command()
@click.pass_context
def reconcile(ctx: click.Context) -> None:
    """Run one reconciler pass now."""
    from workers.context import worker_context
    from workers.reconciler import reconcile_and_publish

    settings = settings_from(ctx)
    context = worker_context(settings)
    report = reconcile_and_publish(context.sessions, context.publisher,
                                   max_attempts=settings.max_attempts,
                                   grace_seconds=settings.queued_grace_seconds,
                                   chunk_window=settings.max_running_chunks_per_job,
                                   tenant_chunk_limit=settings.max_running_chunks_per_tenant)
    click.echo(f"given up {len(report.given_up)}, requeued {len(report.requeued)}, "
               f"republished {len(report.republished)}")


@cli.command()
@click.option("--port", type=int, default=None, help="API port (default $KILN_API_PORT).")
@click.pass_context
def up(ctx: click.Context, port: int | None) -> None:
    """Run everything on one machine: embedded Postgres and Redis if none are configured,
    migrations, the demo model, the API and a worker. What dies is restarted; Ctrl-C stops it all."""
    from app.migrate import upgrade
    from workers.supervisor import ChildProcess, GaveUp, Supervisor, become_subreaper

    become_subreaper()
    settings = settings_from(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    port = port or settings.api_port
    url = f"http://{settings.api_host}:{port}"
    supervisor = Supervisor(settings.home, url, say=lambda line: err.print(line, markup=False))
    stopping = stop_on_signals()
    gave_up = None
    try:
        settings = with_embedded_services(settings, supervisor)
        upgrade(settings)
        err.print(add_demo_model(settings, "digits", only_if_missing=True))
        env = {**os.environ, "KILN_DATABASE_URL": settings.database_url,
               "KILN_REDIS_URL": settings.redis_url, "KILN_HOME": str(settings.home.resolve()),
               "KILN_WEBHOOK_ALLOW_PRIVATE": "true"}
        supervisor.start(ChildProcess("worker", ["worker"], env))
        supervisor.start(ChildProcess("api", ["api", "--port", str(port)], env, url=url))
        err.print(f"[bold green]Kiln is up.[/] API {url}  docs {url}/docs  (Ctrl-C stops it; "
                  f"`kiln status` shows its services)")
        supervisor.run(until=lambda: stopping)
    except GaveUp as exc:
        gave_up = exc
        err.print(f"[bold red]{exc.detail}[/]")
    finally:
        err.print("stopping …")
        supervisor.stop_all()
        if supervisor.embedded:
            forget_services(settings.home)
        err.print("stopped")
    if gave_up is not None:
        ctx.exit(1)


def stop_on_signals() -> list[bool]:
    """A flag that SIGINT and SIGTERM set (truthy once set), checked by `kiln up`'s loop."""
    stopping: list[bool] = []

    def stop(_signum, _frame) -> None:
        stopping.append(True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stopping


def with_embedded_services(settings: Settings, supervisor) -> Settings:
    """Start (supervised) embedded Postgres and Redis for whichever URL is not configured;
    returns the settings pointing at them, recorded in `KILN_HOME/services.json`."""
    from app.embedded import EmbeddedPostgres, EmbeddedRedis, record_services
    from workers.supervisor import EmbeddedServer

    base = Settings()
    if base.database_url and base.redis_url:
        return settings
    err.print(f"starting embedded Postgres and Redis under {settings.home.resolve()} …")
    urls = {"database_url": base.database_url, "redis_url": base.redis_url}
    for key, server in (("database_url", EmbeddedServer("postgres", EmbeddedPostgres(settings.home))),
                        ("redis_url", EmbeddedServer("redis", EmbeddedRedis(settings.home)))):
        if not urls[key]:
            supervisor.start(server)
            urls[key] = server.url
    record_services(settings.home, **urls)
    return settings.model_copy(update=urls)


def forget_services(home: Path) -> None:
    from app.embedded import forget_services as forget

    forget(home)


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
