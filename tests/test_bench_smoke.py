"""The benchmark measures working systems: each one, run through the bench's own code
on a tiny workload, must apply every event, or the bench must refuse the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from bench import measure, report, run
from bench.systems import SYSTEMS, BenchFailure, Drained, Target, apply_plain
from bench.workloads import Workload, build, check_documents
from tests.conftest import load_sample_entries

pytestmark = pytest.mark.redis_server


def last_snapshots() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sample run's last server snapshot and each sample client's last one, in the
    order of the sample job's clients."""
    server: dict[str, Any] = {}
    clients: dict[str, dict[str, Any]] = {}
    for fields in load_sample_entries():
        if fields["type"] == "server.metrics":
            server = json.loads(fields["metrics"])
        elif fields["type"] == "client.metrics":
            clients[fields["client_uuid"]] = json.loads(fields["metrics"])
    return server, list(clients.values())


@pytest.fixture
def workload() -> Workload:
    return build("smoke", jobs=2)


@pytest.fixture
def target(redis_url: str, real_redis: redis.Redis) -> Target:
    return Target(redis_url, stream="bench-smoke:events", group="bench-smoke")


def test_faststream_is_installed() -> None:
    """System C needs FastStream: a missing install fails here, it is never skipped."""
    try:
        import faststream.redis  # noqa: F401
    except ImportError as error:
        pytest.fail(
            "faststream[redis] is not installed, so benchmark system C cannot run: "
            f"pip install -e '.[bench]' ({error})"
        )


def test_the_workload_is_what_the_issue_asks_for(workload: Workload) -> None:
    job_ids = [job["_id"] for job in workload.jobs]
    uuids = [info["uuid"] for job in workload.jobs for info in job["clients_info"]]
    assert len(set(job_ids)) == 2
    assert len(uuids) == len(set(uuids)) == 10  # 5 clients each, uuids of their own
    for job in job_ids:
        own = [fields for fields in workload.entries if fields["job_id"] == job]
        assert len(own) == 1 + 15 + 5 * 11  # the sample run with 5 clients
    assert {fields["job_id"] for fields in workload.entries[:20]} == set(job_ids)  # mixed


@pytest.mark.parametrize("system", ["A", "B", "C"])
def test_each_writing_system_applies_every_event(
    system: str, workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    database = measure.prepare(real_redis, target, workload)
    drained = SYSTEMS[system](target, database, len(workload))

    assert drained.handled == len(workload)
    assert drained.seconds > 0
    assert measure.pending(real_redis, target) == 0
    server, clients = last_snapshots()
    documents = list(database["job"].find({}))
    assert len(documents) == 2
    for document in documents:
        assert document["status"] == "FINISHED_SUCCESSFULLY"
        assert json.loads(document["server_metrics"]) == server
        for number, info in enumerate(document["clients_info"]):
            assert json.loads(info["metrics"]) == clients[number % len(clients)]
    assert check_documents(database, workload) == []


def test_the_worker_without_a_store_handles_every_event(
    workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    database = measure.prepare(real_redis, target, workload)
    drained = SYSTEMS["D"](target, database, len(workload))

    assert drained.handled == len(workload)
    assert set(drained.counts) <= {"applied", "coalesced"}
    assert measure.pending(real_redis, target) == 0
    assert {doc["status"] for doc in database["job"].find({})} == {"NOT_STARTED"}


def drain_skipping_the_last(target: Target, database: Any, skip: int) -> Drained:
    """A broken system: acknowledges every entry but never applies the last ``skip``."""
    client = redis.Redis.from_url(target.redis_url, decode_responses=True)
    reply: Any = client.xreadgroup(target.group, "broken", {target.stream: ">"})
    entries = reply[0][1]
    for _entry_id, fields in entries[: len(entries) - skip]:
        apply_plain(database["job"], fields)
    client.xack(target.stream, target.group, *(entry_id for entry_id, _ in entries))
    client.close()
    return Drained(1.0, len(entries))


def test_a_system_that_skips_events_is_refused(
    workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    database = measure.prepare(real_redis, target, workload)
    drained = drain_skipping_the_last(target, database, skip=1)

    assert drained.handled == len(workload)
    with pytest.raises(BenchFailure, match=r"not the last|not its last|status"):
        measure.verify("B", drained, workload, database, real_redis, target)


def test_a_system_that_handles_too_few_is_refused(
    workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    database = measure.prepare(real_redis, target, workload)
    SYSTEMS["B"](target, database, len(workload))

    short = Drained(1.0, len(workload) - 1)
    with pytest.raises(BenchFailure, match="handled"):
        measure.verify("B", short, workload, database, real_redis, target)


TINY = run.Config(
    mode="tiny",
    runs=3,
    steady_jobs=1,
    backlog_jobs=1,
    backlog_repeats=1,
    latency_rate=2000.0,
    latency_jobs=1,
    latency_passes=2,
    latency_small_jobs=1,
    memory_events=400,
    memory_warmup=100,
    memory_jobs=1,
    scaling_jobs=1,
    scaling_passes=1,
)


def test_a_tiny_benchmark_measures_everything_and_writes_both_outputs(tmp_path: Path) -> None:
    """The whole command on a private redis-server, child processes included."""
    results = run.benchmark(TINY, "ABCD", [], tmp_path / "logs")
    page = run.write_results(results, tmp_path)

    verdicts = {verdict["target"]: verdict["result"] for verdict in results["targets"]}
    assert len(verdicts) == len(report.TARGETS) == 7
    assert set(verdicts.values()) <= {"PASS", "MISS"}  # each one measured
    for workload in ("steady", "backlog"):
        for system in "ABCD":
            assert len(results["throughput"][workload]["runs"][system]) == 3
            assert results["throughput"][workload]["median"][system] > 0
    assert results["latency"]["events"] == results["latency_small"]["events"] == 142
    assert results["latency"]["p99_ms"] > 0
    assert results["memory"]["events"] == 400
    assert results["scaling"]["one"] and results["scaling"]["two"]
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["redis_server"][0].isdigit()
    assert (tmp_path / "logs" / "latency.log").is_file()
    assert json.loads((tmp_path / "latest.json").read_text()) == results
    assert (tmp_path / "latest.md").read_text() == page
    assert "| A >= 0.9 x B on steady |" in page
    assert "## Throughput" in page
