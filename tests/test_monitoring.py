"""The monitoring kit in deploy/: the Prometheus alerting rules and the Grafana dashboard
query only metrics the worker's exporter really serves (scraped from a running exporter
after a worker handled the sample run), and the rules pass promtool's checks and their
own unit tests (deploy/prometheus-rules.test.yml) when promtool is installed (CI
installs it: `./dev promtool`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pymongo.database import Database
from ruamel.yaml import YAML

from worker.consumer import Worker
from worker.entities import JOB_COLLECTION
from worker.outcomes import Outcome
from worker.prometheus import start_exporter
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
# Series Prometheus makes itself, not the exporter.
PROMETHEUS_OWN = {"up"}
# Sample names a metric family of each type serves (prometheus_client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "le",
}  # fmt: skip


def metric_names(expression: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (inside braces or after by/without), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expression)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function call or a keyword
        names.add(match.group())
    return names


def rules() -> list[dict[str, Any]]:
    document = YAML(typ="safe", pure=True).load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[set[str]]:
    """Every sample name a running exporter serves, after a worker handled the sample run
    and an invalid entry (so labelled counters have children)."""
    from tests.conftest import load_job_document, load_sample_entries

    names = f"monitoring-{os.getpid()}"
    settings = Settings(
        redis_url=redis_url,
        stream=f"{names}:events",
        dead_stream=f"{names}:dead",
        group=names,
        consumer="monitoring",
        metrics_port=0,
        block_ms=100,
        heartbeat_file=tmp_path_factory.mktemp("monitoring") / "heartbeat",
    )
    client = redis.Redis.from_url(redis_url)
    import mongomock_ng

    database: Database[Any] = mongomock_ng.MongoClient()["florist-server"]
    database[JOB_COLLECTION].insert_one(load_job_document())
    for fields in load_sample_entries():
        client.xadd(settings.stream, dict[Any, Any](fields))
    client.xadd(settings.stream, {"v": "1", "type": "no.such.type", "job_id": "x"})
    observer = start_exporter(settings, redis_client=client, addr="127.0.0.1", cache_s=0)
    try:
        Worker(client, database, settings, observers=[observer]).drain()
        url = f"http://127.0.0.1:{observer.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found: set[str] = set()
        for family in text_string_to_metric_families(text):
            found |= {sample.name for sample in family.samples}
            found |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ())}
        yield found
    finally:
        observer.close()
        client.delete(settings.stream, settings.dead_stream)
        client.close()


def test_the_name_finder_finds_series_and_skips_the_rest() -> None:
    expression = (
        'sum by (job, outcome) (increase(florist_worker_events_total{outcome="lost"}[10m])) '
        "> max by (job) (florist_worker_dead_letters offset 10m) and on(job) up == 0"
    )
    assert metric_names(expression) == {
        "florist_worker_events_total",
        "florist_worker_dead_letters",
        "up",
    }


def test_the_exporter_serves_the_metrics_the_kit_is_built_on(served: set[str]) -> None:
    for name in [
        "florist_worker_events_total",
        "florist_worker_lag",
        "florist_worker_dead_letters",
        "florist_worker_watchdog_finished_jobs_total",
        "florist_worker_apply_seconds_bucket",
    ]:
        assert name in served


def test_every_alert_rule_uses_only_served_metrics(served: set[str]) -> None:
    for rule in rules():
        unknown = metric_names(rule["expr"]) - served - PROMETHEUS_OWN
        assert not unknown, f"{rule['alert']} queries {unknown}, which the exporter does not serve"
        for value in re.findall(r'outcome="([^"]+)"', rule["expr"]):
            assert value in {outcome.value for outcome in Outcome}, rule["alert"]


def test_the_rules_cover_the_failures_an_operator_must_hear_of() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    covered = {
        "worker down": "FloristWorkerDown",
        "no worker at all": "FloristWorkerAbsent",
        "Redis outage": "FloristRedisUnreachable",
        "MongoDB outage": "FloristMongoDBUnreachable",
        "heartbeat missing (a hung loop)": "FloristWorkerHeartbeatMissing",
        "MongoDB outage or stuck loop": "FloristEntriesNotHandled",
        "group lag growing": "FloristLagGrowing",
        "dead letters appearing": "FloristDeadLettersAppeared",
        "jobs finished by the watchdog": "FloristJobFinishedByWatchdog",
        "stream trimmed past unread entries": "FloristStreamTrimmedUnread",
        "entry IDs pushed ahead of Redis's clock": "FloristEntryIdAhead",
    }
    for failure, alert in covered.items():
        assert alert in alerts, failure
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_dashboard_queries_only_served_metrics(served: set[str]) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 10
    used: set[str] = set()
    for expression in expressions:
        unknown = metric_names(expression) - served - PROMETHEUS_OWN
        assert not unknown, f"the dashboard queries {unknown}: {expression}"
        used |= metric_names(expression)
    gauges = {"lag", "pending", "dead_letters", "stream_length", "oldest_pending_idle_seconds"}
    assert {f"florist_worker_{gauge}" for gauge in gauges} <= used


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert [v["type"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(target["refId"] for target in panel["targets"])


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("promtool is missing under CI: .ci/run installs it with ./dev promtool")
    return found


@pytest.mark.parametrize(
    ("command", "target"),
    [("check", RULES), ("test", RULE_TESTS)],
    ids=["check-rules", "test-rules"],
)
def test_promtool_accepts_the_rules_and_their_unit_tests(command: str, target: Path) -> None:
    executable = promtool()
    if executable is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [executable, command, "rules", target.name],
        cwd=target.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
