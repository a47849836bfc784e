"""The benchmark measures working systems: each one, run through the bench's own code
on a tiny workload, must apply every event, or the bench must refuse the run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mongomock_ng
import pytest
import redis
from pymongo import UpdateOne

from bench import measure, report, run
from bench.network import Network, delayed
from bench.systems import NAMES, SYSTEMS, BenchFailure, Drained, Target, apply_plain
from bench.workloads import Workload, build, check_documents
from tests.conftest import load_sample_entries
from worker.memorydb import has_native_bulk_write

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


def test_the_modelled_network_delays_and_counts_each_call_to_the_server() -> None:
    raw: Any = mongomock_ng.MongoClient()["net"]
    raw["job"].insert_one({"_id": "j", "n": 0})
    network = Network(2.0)
    database: Any = delayed(raw, network)

    started = time.perf_counter()
    for number in range(10):
        database["job"].update_one({"_id": "j"}, {"$set": {"n": number}})
    elapsed = time.perf_counter() - started
    assert network.round_trips == 10
    assert elapsed >= 10 * 0.002 * 0.9  # the delay is slept (overshoot learnt, not assumed)
    assert 1.8 <= network.mean_delay_ms <= 2.5

    collection = database.get_collection("job").with_options()
    assert collection.find_one({"_id": "j"})["n"] == 9
    assert list(database.job.find({})) == [{"_id": "j", "n": 9}]
    database.command("ping")
    assert collection.write_concern.acknowledged  # an attribute, not a round trip
    assert collection.name == "job"
    assert network.by_method == {"update_one": 10, "find_one": 1, "find": 1, "command": 1}
    assert network.round_trips == 13


def test_a_bulk_write_is_one_round_trip_applied_in_order() -> None:
    raw: Any = mongomock_ng.MongoClient()["net"]
    raw["job"].insert_one({"_id": "j", "clients": [{"uuid": "u", "n": 0}]})
    network = Network(0)
    collection: Any = delayed(raw, network)["job"]

    requests = [
        UpdateOne(
            {"_id": "j"}, {"$set": {"clients.$[c].n": number}}, array_filters=[{"c.uuid": "u"}]
        )
        for number in range(1, 6)
    ]
    result = collection.bulk_write(requests, ordered=True)
    assert result.matched_count == 5
    assert raw["job"].find_one({"_id": "j"})["clients"][0]["n"] == 5  # the last one won
    assert network.by_method == {"bulk_write": 1}
    assert has_native_bulk_write(collection)  # the worker hands its bulks to the proxy


def test_no_delay_still_counts() -> None:
    network = Network(0)
    database: Any = delayed(mongomock_ng.MongoClient()["net"], network)
    database["job"].insert_many([{"_id": 1}, {"_id": 2}])
    assert database["job"].count_documents({}) == 2
    assert network.round_trips == 2 and network.slept_s == 0 and network.mean_delay_ms == 0


@pytest.mark.parametrize("system", ["A", "A1", "B", "C"])
def test_each_writing_system_applies_every_event(
    system: str, workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    database = measure.prepare(real_redis, target, workload)
    network = Network(0)
    drained = SYSTEMS[system](target, delayed(database, network), len(workload))

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
    assert network.round_trips > 0  # it went through the proxy
    if system.startswith("A"):
        assert isinstance(drained.round_trips, int) and drained.round_trips > 0


def test_a_drain_behind_the_network_reports_round_trips(
    workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    plain = measure.drain_once("B", workload, real_redis, target, rtt_ms=0.5)
    assert plain.events == len(workload)
    assert plain.round_trips == plain.proxy_round_trips == len(workload)  # one per event
    assert plain.counted_by == "proxy"
    assert plain.network_s >= len(workload) * 0.0005 * 0.9
    worker = measure.drain_once("A", workload, real_redis, target, rtt_ms=0.5)
    assert worker.counted_by == "store.round_trips"
    assert 0 < worker.round_trips < len(workload)
    read = measure.drain_once("R", workload, real_redis, target, rtt_ms=0.5)
    assert (read.round_trips, read.proxy_round_trips, read.network_s) == (0, 0, 0.0)
    assert read.counted_by == "no MongoDB"


def test_the_plain_read_loop_reads_and_acknowledges_every_entry(
    workload: Workload, target: Target, real_redis: redis.Redis
) -> None:
    database = measure.prepare(real_redis, target, workload)
    drained = SYSTEMS["R"](target, None, len(workload))

    assert drained.handled == len(workload)
    assert measure.pending(real_redis, target) == 0
    assert {doc["status"] for doc in database["job"].find({})} == {"NOT_STARTED"}


def test_replay_is_measured_and_scaled(target: Target, real_redis: redis.Redis) -> None:
    figures = measure.replay(real_redis, target, jobs=1, count=100, rtt_ms=0.5)
    assert figures["entries"] == 142  # whole passes of the 71-event workload
    assert sum(figures["counts"].values()) == 142
    assert figures["scaled_1m_entries_s"] == pytest.approx(
        1_000_000 / figures["events_per_s"], rel=0.01
    )
    assert figures["mongo_round_trips_per_1000_events"] > 0
    assert figures["modelled_rtt_ms"] == 0.5


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
    rtts_ms=(0.0, 2.0),
    replay_entries=71,
    replay_rtts_ms=(0.0, 2.0),
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
    announced: list[str] = []
    results = run.benchmark(TINY, list(NAMES), [], tmp_path / "logs", announce=announced.append)
    page = run.write_results(results, tmp_path)

    verdicts = {verdict["target"]: verdict["result"] for verdict in results["targets"]}
    assert len(verdicts) == len(report.TARGETS) == 15
    assert set(verdicts.values()) <= {"PASS", "MISS"}  # each one measured
    for verdict in results["targets"]:
        assert verdict["issue"] in (6, 13, 20)
        if verdict["result"] == "MISS" and verdict["issue"] == 13:
            assert verdict["bound"]  # what bounds it, worked out from the figures
    for workload in ("steady", "backlog"):
        by_rtt = results["throughput"][workload]["by_rtt"]
        assert set(by_rtt) == {"0", "2"}
        assert set(by_rtt["0"]) == set(NAMES)  # D and R only without a modelled delay
        assert set(by_rtt["2"]) == {"A", "A1", "B", "C"}
        for rtt, rows in by_rtt.items():
            for system, row in rows.items():
                assert len(row["runs"]) == 3
                assert row["events_per_s"] > 0
                assert row["modelled_rtt_ms"] == float(rtt)
                trips = row["mongo_round_trips_per_1000_events"]
                if system in ("D", "R"):
                    assert trips == 0
                elif system in ("B", "C"):
                    assert trips == 1000  # one update_one per event, counted by the proxy
                else:
                    assert row["round_trips_counted_by"] == "store.round_trips"
                    assert 0 < trips < 1000
                if float(rtt):
                    assert 1.8 <= row["measured_delay_ms"] <= 2.5
        assert results["ratios"][workload]["2"]["A/B"] > 0
        assert results["ratios"][workload]["0"]["D/R"] > 0
    replay = results["replay"]["by_rtt"]
    assert set(replay) == {"0", "2"}
    assert replay["2"]["network_s"] > 0 and replay["0"]["network_s"] == 0
    assert replay["2"]["scaled_1m_entries_s"] > 0
    assert results["latency"]["events"] == results["latency_small"]["events"] == 142
    assert results["latency"]["p99_ms"] > 0
    assert results["memory"]["events"] == 400
    assert results["scaling"]["one"] and results["scaling"]["two"]
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["redis_server"][0].isdigit()
    assert (tmp_path / "logs" / "latency.log").is_file()
    assert json.loads((tmp_path / "latest.json").read_text()) == results
    assert (tmp_path / "latest.md").read_text() == page
    assert announced and announced[0].startswith("Command: `")
    assert "Machine: " in announced[0] and "redis-server" in announced[0]
    assert "| A >= 0.9 x B on steady |" in page
    assert "| at 2 ms: A >= 10 x C on backlog |" in page
    assert "scaled linearly" in page
    assert "MODELLED NETWORK" in page
    assert "## Throughput" in page


def test_a_miss_says_what_bounds_it() -> None:
    def row(system: str, rate: float, network_us: float, trips: float) -> dict[str, Any]:
        return {
            "system": system,
            "workload": "backlog",
            "modelled_rtt_ms": 2.0,
            "events_per_s": rate,
            "us_per_event": 1e6 / rate,
            "network_us_per_event": network_us,
            "mongo_round_trips_per_1000_events": trips,
            "proxy_round_trips_per_1000_events": trips,
            "round_trips_counted_by": "store.round_trips" if system == "A" else "proxy",
            "proxy_round_trips_by_method": {"bulk_write": 1},
        }

    results: dict[str, Any] = {
        "read_count": 1000,
        "throughput": {
            "backlog": {
                "by_rtt": {"2": {"A": row("A", 2000, 100, 50), "B": row("B", 400, 2000, 1000)}}
            }
        },
        "ratios": {"backlog": {"2": {"A/B": 5.0}}},
    }
    verdicts = {v["target"]: v for v in report.judge(results)}
    ratio = verdicts["at 2 ms: A >= 10 x B on backlog"]
    assert ratio["result"] == "MISS"
    assert "in-process work alone" in ratio["bound"]  # 400 us local > the 250 us budget
    trips = verdicts["A <= 3 MongoDB round trips per 1,000 events on backlog"]
    assert trips["result"] == "MISS" and "50.0 round trips per 1,000" in trips["bound"]
    assert verdicts["at 2 ms: A >= 2.5 x B on steady"]["result"] == "not measured"

    disagreeing = row("A", 2000, 100, 50) | {"proxy_round_trips_per_1000_events": 120.0}
    assert "the proxy counted 120.0" in report.disagreement(disagreeing)
    assert report.disagreement(row("A", 2000, 100, 50)) == ""


def test_a_quick_run_writes_apart_from_the_committed_figures() -> None:
    """`./dev bench --quick` must not replace bench/results/latest.* of a full run."""
    assert run.parse_args(["--quick"]).results == run.RESULTS / "quick"
    assert run.parse_args([]).results == run.RESULTS
    assert run.parse_args(["--quick", "--results", "elsewhere"]).results == Path("elsewhere")
    ignored = (run.RESULTS / ".gitignore").read_text().split()
    assert "quick/" in ignored
