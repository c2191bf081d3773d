"""deploy/k8s (and docker-compose.yml) checked against the code they run: settings, `kiln`
commands, the API's routes, and the shutdown timings. No cluster: the manifests are read as YAML."""

from __future__ import annotations

import os
import re
import shlex
from functools import cache
from pathlib import Path
from unittest import mock

import click
import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SETTINGS = {f"KILN_{name.upper()}" for name in Settings.model_fields}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# The first step of the documented order (deploy/README.md): everything but the API and workers.
PRE_DEPLOY_SELECTOR = "app.kubernetes.io/component notin (api,worker-cpu,worker-gpu)"
COMPONENT = "app.kubernetes.io/component"
SOFT_SHUTDOWN_MARGIN_SECONDS = 15  # cancelling tasks, requeueing messages, closing connections


# ---------------------------------------------------------------- reading the manifests

def manifest_paths() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.y*ml") if p.name != "kustomization.yaml")


@cache
def documents(path: Path) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def objects(kind: str | None = None) -> list[dict]:
    return [doc for path in manifest_paths() for doc in documents(path)
            if kind is None or doc["kind"] == kind]


def named(kind: str, name: str) -> dict:
    [found] = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    return found


def workloads() -> list[dict]:
    return [doc for doc in objects() if doc["kind"] in WORKLOADS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def all_containers() -> list[tuple[dict, dict]]:
    return [(workload, container) for workload in workloads() for container in containers(workload)]


def argv(container: dict) -> list[str]:
    return [str(part) for part in container.get("command", []) + container.get("args", [])]


def kiln_workload(subcommand: str, queue: str | None = None) -> dict:
    """The one workload whose container runs `kiln SUBCOMMAND [-Q queue]`."""
    found = [w for w, c in all_containers()
             if argv(c)[1:2] == [subcommand] and (queue is None or queue_of(c) == queue)]
    assert len(found) == 1, f"expected one `kiln {subcommand}` workload, found {len(found)}"
    return found[0]


def queue_of(container: dict) -> str | None:
    args = argv(container)
    for flag in ("-Q", "--queues"):
        if flag in args:
            return args[args.index(flag) + 1]
    return None


def environment(container: dict) -> dict[str, str]:
    """What the container's process sees: envFrom ConfigMaps and Secrets, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        if "secretRef" in source:
            secret = named("Secret", source["secretRef"]["name"])
            env.update(secret.get("stringData", {}))
            assert not secret.get("data"), "keep the template readable: stringData only"
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
    return env


def settings_of(container: dict) -> Settings:
    """Kiln's settings as the container builds them from its environment (and nothing else)."""
    with mock.patch.dict(os.environ, environment(container), clear=True):
        return Settings()


def cluster_settings() -> Settings:
    """The settings every pod shares (the API's view of the ConfigMap and Secret)."""
    [container] = pod_spec(kiln_workload("api"))["containers"]
    return settings_of(container)


def env_names() -> list[str]:
    names = [key for kind in ("ConfigMap", "Secret") for doc in objects(kind)
             for key in {**doc.get("data", {}), **doc.get("stringData", {})}]
    return names + [entry["name"] for _, c in all_containers() for entry in c.get("env", [])]


def resolve_kiln_command(args: list[str]) -> click.Command:
    """The click command `kiln ARGS` would run, its options parsed (not invoked)."""
    from workers.cli import cli

    assert args and args[0] == "kiln", f"not a kiln command: {args}"
    command, rest, path = cli, list(args[1:]), ["kiln"]
    while isinstance(command, click.Group):
        assert rest, f"`{' '.join(path)}` needs a subcommand"
        name = rest.pop(0)
        assert name in command.commands, f"`{' '.join(path)}` has no subcommand {name!r}"
        command, path = command.commands[name], [*path, name]
    command.make_context(" ".join(path), rest)  # raises on an unknown option or a bad value
    return command


def selects(selector: str, labels: dict[str, str]) -> bool:
    """The `KEY notin (a,b)` label selector of the documented first step, as kubectl reads it."""
    match = re.fullmatch(r"(\S+) notin \(([^)]*)\)", selector)
    assert match, selector
    return labels.get(match[1]) not in match[2].split(",")


# ---------------------------------------------------------------- files and kustomize

def test_every_manifest_parses_into_named_kubernetes_objects():
    assert manifest_paths(), "no manifests under deploy/k8s"
    seen = set()
    for path in manifest_paths():
        assert documents(path), f"{path.name} holds no document"
        for doc in documents(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, f"{key} defined twice"
            seen.add(key)


def test_kustomization_lists_every_manifest_and_nothing_else():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    assert set(resources) == {str(p.relative_to(K8S)) for p in manifest_paths()}


def test_every_image_is_one_the_kustomization_can_retag():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    retaggable = {image["name"] for image in kustomization["images"]}
    used = {c["image"].split(":")[0] for _, c in all_containers()}
    assert used <= retaggable


# ---------------------------------------------------------------- settings and commands

def test_every_kiln_variable_is_a_real_setting():
    names = env_names()
    assert "KILN_DATABASE_URL" in names
    unknown = sorted({n for n in names if "KILN" in n.upper() and n not in SETTINGS})
    assert unknown == []


def test_every_container_builds_valid_settings_from_its_environment():
    for workload, container in all_containers():
        settings = settings_of(container)  # raises on a value Kiln would refuse at start-up
        assert settings.database_url and settings.redis_url, workload["metadata"]["name"]


def test_every_container_runs_a_real_kiln_command():
    for workload, container in all_containers():
        args = argv(container)
        assert args, f"{workload['metadata']['name']} relies on the image's CMD; say what it runs"
        resolve_kiln_command(args)


def test_secrets_live_in_the_secret_not_the_configmap():
    secret_keys = {key for doc in objects("Secret") for key in doc.get("stringData", {})}
    assert {"KILN_DATABASE_URL", "KILN_REDIS_URL", "KILN_SECRET_KEY",
            "KILN_METRICS_TOKEN"} <= secret_keys
    config_keys = {key for doc in objects("ConfigMap") for key in doc.get("data", {})}
    assert not [k for k in config_keys if re.search(r"SECRET|TOKEN|PASSWORD|_URL$|ACCESS_KEY", k)
                and k != "KILN_STORAGE_URL"]


def test_storage_is_shared_object_storage():
    """Pods share no filesystem: an upload taken by one API pod is read by any worker."""
    for _, container in all_containers():
        assert settings_of(container).storage_url.startswith("s3://")


# ---------------------------------------------------------------- the API

def test_probes_hit_routes_the_api_has():
    from app.api import create_app

    api = kiln_workload("api")
    [container] = pod_spec(api)["containers"]
    settings = settings_of(container)
    app = create_app(settings.model_copy(update={
        "tuning": settings.tuning.model_copy(update={"max_batch_wait_ms": 0})}))
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # Postgres and Redis
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never the dependencies
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            probe = container[kind]["httpGet"]
            assert probe["path"] in routes
            assert ports.get(probe["port"], probe["port"]) == settings.api_port
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes
    assert int(annotations["prometheus.io/port"]) == settings.api_port


def test_api_listens_where_the_service_and_probes_look():
    api = kiln_workload("api")
    [container] = pod_spec(api)["containers"]
    settings = settings_of(container)
    assert settings.api_host == "0.0.0.0", "127.0.0.1 is unreachable from the kubelet and Service"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.api_port
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    [service] = [s for s in objects("Service") if s["spec"]["selector"].items() <= pod_labels.items()]
    assert {ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        settings.api_port}
    [pdb] = objects("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert api["spec"]["replicas"] > 1, "a PodDisruptionBudget needs more than one replica to help"


def test_api_grace_period_covers_the_pre_stop_sleep_and_the_servers_graceful_timeout():
    from app.server import ApiServer

    api = kiln_workload("api")
    [container] = pod_spec(api)["containers"]
    server = ApiServer(settings_of(container), "0.0.0.0", 8000)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = float(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0.0
    assert pod_spec(api)["terminationGracePeriodSeconds"] > sleep + server.graceful_timeout


# ---------------------------------------------------------------- workers

def test_worker_queues_match_the_settings():
    """One worker Deployment per queue: KILN_QUEUE on CPUs, KILN_GPU_QUEUE on GPUs."""
    workers = [c for _, c in all_containers() if argv(c)[1:2] == ["worker"]]
    for container in workers:
        settings = settings_of(container)
        assert sorted(queue_of(c) for c in workers) == sorted([settings.queue, settings.gpu_queue])


def test_worker_grace_period_covers_the_soft_shutdown():
    for workload, container in all_containers():
        if argv(container)[1:2] != ["worker"]:
            continue
        env = environment(container)
        # Without the remap a SIGTERM is Celery's warm shutdown, unbounded by the setting.
        assert env.get("REMAP_SIGTERM") == "SIGQUIT", workload["metadata"]["name"]
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        soft = settings_of(container).soft_shutdown_seconds
        assert grace >= soft + SOFT_SHUTDOWN_MARGIN_SECONDS, workload["metadata"]["name"]


def test_worker_metrics_port_is_exposed_and_scraped():
    for workload, container in all_containers():
        if argv(container)[1:2] != ["worker"]:
            continue
        port = settings_of(container).worker_metrics_port
        assert port, "KILN_WORKER_METRICS_PORT is off"
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == port


def test_worker_sizing_is_explicit():
    """The defaults count the node's CPUs, not the pod's: a 64-core node would fork 64 children."""
    for workload, container in all_containers():
        if argv(container)[1:2] == ["worker"]:
            settings = settings_of(container)
            assert settings.worker_concurrency and settings.ort_threads, workload["metadata"]["name"]
        if argv(container)[1:2] == ["api"]:
            assert settings_of(container).api_workers


def test_gpu_workers_request_a_gpu_and_start_at_zero():
    settings = cluster_settings()
    gpu = kiln_workload("worker", settings.gpu_queue)
    [container] = pod_spec(gpu)["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu["spec"]["replicas"] == 0
    spec = pod_spec(gpu)
    assert spec.get("nodeSelector") or spec.get("affinity")
    assert spec.get("tolerations")
    cpu = kiln_workload("worker", settings.queue)
    assert "nvidia.com/gpu" not in str(cpu)


def test_the_hpa_owns_the_cpu_workers_replicas():
    [hpa] = objects("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = named(target["kind"], target["name"])
    assert deployment is kiln_workload("worker", cluster_settings().queue)
    assert "replicas" not in deployment["spec"], "every apply would reset the HPA's choice"
    [container] = pod_spec(deployment)["containers"]
    assert container["resources"]["requests"]["cpu"], "CPU utilization is relative to requests"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# ---------------------------------------------------------------- every pod

def test_containers_run_as_non_root_on_a_read_only_root():
    for workload, container in all_containers():
        name = f"{workload['metadata']['name']}/{container['name']}"
        pod = pod_spec(workload).get("securityContext", {})
        own = container.get("securityContext", {})
        merged = {**pod, **own}
        assert merged.get("runAsNonRoot") is True, name
        # A numeric uid (the image's USER) lets the kubelet verify runAsNonRoot.
        assert merged.get("runAsUser", 0) > 0, name
        assert own.get("allowPrivilegeEscalation") is False, name
        assert own.get("capabilities", {}).get("drop") == ["ALL"], name
        assert own.get("readOnlyRootFilesystem") is True, name
        # PROMETHEUS_MULTIPROC_DIR goes to $TMPDIR.
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], name


def test_containers_have_requests_and_a_memory_limit():
    for _, container in all_containers():
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), container["name"]
        assert "memory" in resources.get("limits", {}), container["name"]


def test_deployments_start_only_once_the_schema_is_at_head():
    for workload in workloads():
        waits = [argv(c) for c in pod_spec(workload).get("initContainers", [])
                 if argv(c)[1:3] == ["db", "wait"]]
        if workload["kind"] == "Deployment":
            assert waits, workload["metadata"]["name"]
            [main] = pod_spec(workload)["containers"]
            assert pod_spec(workload)["initContainers"][0]["image"] == main["image"]
        else:
            assert not waits, workload["metadata"]["name"]


def test_only_the_migration_job_migrates_and_it_runs_first():
    migrators = [w for w, c in all_containers() if argv(c)[1:3] == ["db", "upgrade"]]
    assert [w["kind"] for w in migrators] == ["Job"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert PRE_DEPLOY_SELECTOR in readme, "deploy/README.md's first step names another selector"
    first = [doc for doc in objects() if selects(PRE_DEPLOY_SELECTOR,
                                                 doc["metadata"].get("labels", {}))]
    kinds = {doc["kind"] for doc in first}
    assert {"Job", "ConfigMap", "Secret"} <= kinds
    assert not kinds & {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


# ---------------------------------------------------------------- docs and docker-compose

def test_the_readme_links_the_deploy_guide():
    assert "deploy/README.md" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_uses_real_settings_and_kiln_commands(compose):
    for name, service in compose["services"].items():
        if "build" not in service:  # postgres, redis, flower
            continue
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        assert not [k for k in environment if "KILN" in k and k not in SETTINGS], name
        command = service.get("command", ["kiln", "api"])  # the Dockerfile's CMD
        if isinstance(command, str):
            command = shlex.split(command)
        if command[:2] == ["sh", "-c"]:
            steps = [shlex.split(step) for step in re.split(r"&&|;", command[2])]
        else:
            steps = [command]
        for step in steps:
            resolve_kiln_command(step)


def test_the_api_keeps_idle_connections_longer_than_load_balancers_do():
    """In granian the header read timeout is also the idle keep-alive timeout (30 s by default,
    shorter than AWS ALB's 60 s): a client would reuse a connection the server just closed."""
    from app.server import ApiServer
    from app.settings import Settings

    server = ApiServer(Settings(), "127.0.0.1", 8000)
    assert server.options["http1_settings"].header_read_timeout >= 61_000
    assert server.options["workers_kill_timeout"] == server.graceful_timeout
