"""deploy/grafana and deploy/prometheus checked against the metrics the code defines: every
kiln_* series they query exists, with the labels they select on, and the rules parse."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from functools import cache
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from app import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "kiln.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SERIES = re.compile(r"\b(kiln_[a-z_]+)\b(?:\{([^}]*)\})?")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@cache
def exported() -> dict[str, set[str]]:
    """Every series name the code exports, with its label names (`le` on histogram buckets)."""
    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                for suffix in SUFFIXES[family.type]:
                    extra = {"le"} if suffix == "_bucket" else set()
                    names[family.name + suffix] = set(value._labelnames) | extra
    # computed at scrape time in app/api/metrics.py (GaugeMetricFamily)
    source = (ROOT / "app" / "api" / "metrics.py").read_text()
    for name in re.findall(r'GaugeMetricFamily\(\s*"(kiln_[a-z_]+)"', source):
        names[name] = {"status"} if name == "kiln_jobs" else set()
    return names


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def unknown_series(expressions: list[str]) -> list[str]:
    problems = []
    for expr in expressions:
        for name, matchers in SERIES.findall(expr):
            if name not in exported():
                problems.append(f"{name} (in {expr!r})")
                continue
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                if label not in exported()[name]:
                    problems.append(f"{name} has no label {label!r} (in {expr!r})")
    return problems


def test_the_code_defines_the_metrics_this_test_reads():
    assert {"kiln_jobs", "kiln_jobs_finished_total", "kiln_model_call_seconds_bucket",
            "kiln_jobs_oldest_queued_seconds"} <= set(exported())
    assert exported()["kiln_http_requests_total"] == {"route", "method", "status"}


def test_every_metric_the_dashboard_queries_exists():
    queries = dashboard_queries()
    assert len(queries) >= 15
    assert unknown_series(queries) == []
    assert unknown_series(['rate(kiln_jobs_made_up_total[5m])',
                           'kiln_jobs_finished_total{tenant="x"}']) != []  # the check can fail


def test_the_dashboard_covers_throughput_queue_durations_batches_and_webhooks():
    queried = {name for expr in dashboard_queries() for name, _ in SERIES.findall(expr)}
    assert {"kiln_jobs_submitted_total", "kiln_jobs_finished_total", "kiln_jobs",
            "kiln_jobs_oldest_queued_seconds", "kiln_model_call_seconds_bucket",
            "kiln_model_batch_rows_bucket", "kiln_webhook_deliveries_total",
            "kiln_rows_scored_total"} <= queried


def test_alert_rules_parse_and_use_only_existing_metrics():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    assert unknown_series([rule["expr"] for rule in rules]) == []
    assert {"KilnBacklogOutlivesCompletionWindow", "KilnWorkersAbsent", "KilnWorkersStalled",
            "KilnWebhookFailuresRising", "KilnDependencyUnreachable"} <= set(names)


def test_promtool_accepts_the_rules_where_it_is_installed():
    promtool = shutil.which("promtool")
    if promtool is None:
        warnings.warn("promtool is not installed: deploy/prometheus/alerts.yml was checked as "
                      "YAML and against the metrics only (install Prometheus for "
                      "`promtool check rules`)", stacklevel=1)
        assert yaml.safe_load(ALERTS.read_text())["groups"]
        return
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
