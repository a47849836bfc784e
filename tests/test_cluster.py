"""Redis Cluster mode on a real local cluster (three primaries, one replica each).

The cluster is started once for this module by :mod:`tests.redis_cluster` and killed
after; every test works on streams of its own hash tag. The failover is in
tests/test_cluster_failover.py (it breaks its own cluster). The checks of names and
slots at the end need no server.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pymongo.database import Database

from tests.redis_cluster import LocalCluster
from tests.support import decoded_metrics, job_of, last_snapshots, settings
from worker.cli import main
from worker.cluster import (
    ClusterClient,
    CrossSlot,
    NotACluster,
    check_names,
    hash_tag,
    slot,
    tagged,
)
from worker.connections import connect_redis
from worker.consumer import Worker
from worker.deadletter import requeue
from worker.producer import EventPublisher, StreamMetricsReporter
from worker.replay import replay
from worker.settings import Settings
from worker.stats import collect_stats


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("redis-cluster")) as started:
        yield started


@pytest.fixture
def stream() -> str:
    """A stream of this test's own hash tag: its dead letters and records share its slot."""
    return f"{{t-{uuid.uuid4().hex[:10]}}}:events"


def cluster_settings(cluster: LocalCluster, stream: str, **overrides: Any) -> Settings:
    return settings(redis_url=cluster.url, redis_cluster=True, stream=stream, **overrides)


@pytest.fixture
def client(cluster: LocalCluster, stream: str) -> Iterator[redis.Redis]:
    opened = connect_redis(cluster_settings(cluster, stream))
    yield opened
    opened.close()


def publish_all(cluster: LocalCluster, stream: str, entries: list[dict[str, str]]) -> list[str]:
    """Through the producer library in cluster mode, as an FL process would."""
    publisher = EventPublisher.from_url(cluster.url, stream, cluster=True)
    try:
        return [publisher.publish_fields(fields) for fields in entries]
    finally:
        publisher.close()


def check_final_document(database: Database[Any], job_document: dict[str, Any], entries) -> None:
    document = job_of(database, job_document["_id"])
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    server, clients = decoded_metrics(document)
    expected_server, expected_clients = last_snapshots(entries)
    assert server == expected_server
    for info, metrics in zip(document["clients_info"], clients, strict=True):
        assert metrics == expected_clients[info["uuid"]]


pytestmark = pytest.mark.redis_cluster


# -- the sample run, end to end -----------------------------------------------------------


def test_connect_redis_gives_a_cluster_client_that_follows_the_slots(cluster, client, stream):
    assert isinstance(client, ClusterClient)
    assert client.ping()
    assert stream.endswith(":events") and hash_tag(stream) is not None
    # The stream lives on the primary of its slot, wherever the URL pointed.
    client.xadd(stream, {"a": "1"})
    holder = cluster.primary_for(stream)
    direct = holder.client()
    try:
        assert direct.xlen(stream) == 1
    finally:
        direct.close()


def test_the_sample_run_end_to_end(cluster, client, stream, database, job_document, sample_entries):
    database["job"].insert_one(job_document)
    ids = publish_all(cluster, stream, sample_entries)
    assert len(ids) == 38

    counts = Worker(client, database, cluster_settings(cluster, stream, batch_size=7)).drain()

    assert sum(counts.values()) == len(sample_entries)
    assert set(counts) <= {"applied", "coalesced"}
    check_final_document(database, job_document, sample_entries)
    assert client.xpending(stream, "florist-worker")["pending"] == 0
    assert client.exists(f"{stream}:dead") == 0


def test_the_run_command_consumes_the_cluster(cluster, stream, database, job_document, tmp_path):
    """``run`` with FLORIST_REDIS_CLUSTER, and the healthcheck of its heartbeat."""
    from worker.commands import run as run_command

    database["job"].insert_one(job_document)
    heartbeat = tmp_path / "heartbeat"
    workers: list[Worker] = []

    class Captured(Worker):
        def __init__(self, redis_client: Any, _database: Any, *args: Any, **kwargs: Any):
            super().__init__(redis_client, database, *args, **kwargs)
            workers.append(self)

    arguments = [
        "run",
        *("--redis-url", cluster.url, "--redis-cluster", "true", "--stream", stream),
        *("--mongodb-uri", "memory://", "--heartbeat-file", str(heartbeat)),
        *("--heartbeat-interval-s", "0.1", "--block-ms", "100", "--consumer", "cli-worker"),
    ]
    original = run_command.Worker
    run_command.Worker = Captured  # type: ignore[misc]
    try:
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(main(arguments)), daemon=True)
        thread.start()
        _wait(lambda: bool(workers), "the worker to start")
        publish_all(cluster, stream, [_status(job_document["_id"], "IN_PROGRESS")])
        _wait(lambda: job_of(database, job_document["_id"])["status"] == "IN_PROGRESS", "apply")
        _wait(heartbeat.exists, "the heartbeat")
        assert main(["healthcheck", "--heartbeat-file", str(heartbeat)]) == 0
        workers[0].stop()
        thread.join(timeout=10)
        assert done == [0]
    finally:
        run_command.Worker = original  # type: ignore[misc]


# -- dead letters and requeue -------------------------------------------------------------


def test_dead_letters_and_requeue(cluster, client, stream, database, job_document, capsys):
    """An entry for a job not stored yet is dead-lettered (MULTI/EXEC of XADD and XACK in
    the stream's slot); ``dlq requeue`` (HSET, XADD, XDEL in one MULTI/EXEC) puts it back
    and the worker applies it once the job exists."""
    job_id = job_document["_id"]
    publish_all(cluster, stream, [_status(job_id, "IN_PROGRESS")])
    worker_settings = cluster_settings(cluster, stream, max_deliveries=1)

    counts = Worker(client, database, worker_settings).drain()

    assert counts == {"unknown_job": 1}
    assert client.xlen(f"{stream}:dead") == 1
    flags = ["--redis-url", cluster.url, "--redis-cluster", "true", "--stream", stream]
    assert main(["dlq", "list", *flags]) == 0
    assert "unknown_job" in capsys.readouterr().out

    database["job"].insert_one(job_document)
    assert main(["dlq", "requeue", "--all", *flags]) == 0
    assert client.xlen(f"{stream}:dead") == 0
    assert client.hlen(f"{stream}:requeued") == 1

    assert Worker(client, database, worker_settings).drain() == {"applied": 1}
    assert job_of(database, job_id)["status"] == "IN_PROGRESS"


def test_requeue_from_python_refuses_names_of_different_slots(cluster, client, stream):
    bad = Settings(redis_url=cluster.url, redis_cluster=True, stream=stream, dead_stream="dead")
    client.xadd("dead", {"v": "1", "dead_reason": "invalid"})
    with pytest.raises(CrossSlot, match="FLORIST_DEAD_STREAM="):
        requeue(client, settings=bad)
    assert client.xlen("dead") == 1  # nothing moved


# -- replay and stats ---------------------------------------------------------------------


def test_replay_rebuilds_the_documents(
    cluster, client, stream, database, job_document, sample_entries
):
    database["job"].insert_one(job_document)
    publish_all(cluster, stream, sample_entries)
    worker_settings = cluster_settings(cluster, stream)

    report = replay(client, database, settings=worker_settings)

    assert report == {"applied": len(sample_entries)}
    check_final_document(database, job_document, sample_entries)
    # Again: the finished job refuses IN_PROGRESS, everything else is already there.
    again = replay(client, database, settings=worker_settings)
    assert again == {"rejected_transition": 1, "duplicate": 37}


def test_stats_on_the_cluster(cluster, client, stream, database, job_document, capsys):
    database["job"].insert_one(job_document)
    publish_all(cluster, stream, [_status(job_document["_id"], "IN_PROGRESS")] * 3)
    worker_settings = cluster_settings(cluster, stream, batch_size=1, max_deliveries=1)
    worker = Worker(client, database, worker_settings)
    worker.stream.ensure_group()
    worker.stream.read_new(1, None)  # one delivered and pending
    client.xadd(f"{stream}:dead", {"dead_reason": "invalid"})

    stats = collect_stats(client, worker_settings)

    assert (stats.length, stats.pending, stats.dead_letters) == (3, 1, 1)
    assert stats.lag == 2
    flags = ["--redis-url", cluster.url, "--redis-cluster", "true", "--stream", stream]
    assert main(["stats", "--json", *flags]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["length"], shown["pending"], shown["dead_letters"]) == (3, 1, 1)
    assert shown["dead_letters_by_reason"] == {"invalid": 1}


# -- the other commands -------------------------------------------------------------------


def test_emit_publishes_to_the_cluster(cluster, client, stream, capsys):
    flags = ["--redis-url", cluster.url, "--redis-cluster", "true", "--stream", stream]
    assert main(["emit", "status", "--job", "j1", "--status", "IN_PROGRESS", *flags]) == 0
    entry_id = capsys.readouterr().out.strip()
    [(found_id, fields)] = client.xrange(stream)
    assert found_id.decode() == entry_id
    assert fields[b"status"] == b"IN_PROGRESS"


def test_the_florist_form_reporter_writes_its_key_outside_the_transaction(cluster, client, stream):
    """FLorist's ``<run_id>`` key and the stream are in different slots: on a cluster the
    key is SET on its own, next to the XADD, instead of in one MULTI/EXEC."""
    node = cluster.primary_for(stream)
    run_id = f"run-{uuid.uuid4().hex}"
    assert slot(run_id) != slot(stream) or run_id == stream
    reporter = StreamMetricsReporter(
        host="127.0.0.1",
        port=node.port,
        run_id=run_id,
        job_id="job-1",
        host_type="server",
        stream=stream,
        cluster=True,
    )
    reporter.report({"host_type": "server", "fit_start": "2024-10-10 15:05:59"})
    reporter.shutdown()
    assert not reporter.pending
    assert json.loads(client.get(run_id)) == {
        "host_type": "server",
        "fit_start": "2024-10-10 15:05:59",
    }
    [(_id, fields)] = client.xrange(stream)
    assert fields[b"type"] == b"server.metrics"


def test_the_demo_runs_on_the_cluster(cluster, capsys):
    code = main(["demo", "--redis-url", cluster.url, "--redis-cluster", "--fast"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "demo OK" in out


def test_the_demo_cluster_flag_needs_a_url(capsys):
    assert main(["demo", "--redis-cluster", "--fast"]) == 2
    assert "--redis-cluster needs --redis-url" in capsys.readouterr().err


def test_the_demo_takes_cluster_mode_from_the_environment_for_its_url(cluster, capsys, monkeypatch):
    monkeypatch.setenv("FLORIST_REDIS_CLUSTER", "true")
    code = main(["demo", "--redis-url", cluster.url, "--fast"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "demo OK" in out


# -- refusing at start --------------------------------------------------------------------


def test_names_that_do_not_share_a_slot_are_refused_at_start(cluster, client, database):
    default_names = Settings(redis_url=cluster.url, redis_cluster=True)
    with pytest.raises(CrossSlot) as refused:
        Worker(client, database, default_names)
    message = str(refused.value)
    assert "\n" not in message
    assert "'florist:events'" in message and "'florist:events:dead'" in message
    assert "FLORIST_STREAM={florist}:events" in message
    assert client.exists("florist:events") == 0  # refused before writing anything


def test_the_run_command_refuses_them_with_one_line(cluster, capsys):
    code = main(["run", "--redis-url", cluster.url, "--redis-cluster", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith("florist-worker run: error: in Redis Cluster mode")
    assert "FLORIST_STREAM={florist}:events" in err[0]


def test_a_dead_stream_of_another_tag_is_refused_with_the_name_to_use(cluster, client, database):
    names = Settings(
        redis_url=cluster.url, redis_cluster=True, stream="{a}:events", dead_stream="{b}:dead"
    )
    with pytest.raises(CrossSlot, match=r"FLORIST_DEAD_STREAM=\{a\}:events:dead"):
        Worker(client, database, names)


def test_a_plain_client_on_a_cluster_is_told_to_set_cluster_mode(cluster, database):
    # Keys of three slots: at least one of them is on another node than the URL's.
    plain = redis.Redis.from_url(cluster.url, socket_timeout=2)
    names = [f"plain-{index}:events" for index in range(12)]
    stream_name = next(
        name
        for name in names
        if cluster.primary_for(name).port != plain.connection_pool.connection_kwargs["port"]
    )
    worker = Worker(plain, database, settings(redis_url=cluster.url, stream=stream_name))
    try:
        with pytest.raises(NotACluster, match="FLORIST_REDIS_CLUSTER=true"):
            worker.drain()
    finally:
        plain.close()


@pytest.mark.redis_server
def test_cluster_mode_on_a_single_server_is_refused(redis_url: str, database, capsys):
    code = main(
        [
            *("run", "--redis-url", redis_url, "--redis-cluster", "true"),
            *("--stream", "{f}:events", "--mongodb-uri", "memory://"),
        ]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the start-up log lines
    assert code == 1
    assert last.startswith("florist-worker run: error: Redis at redis://127.0.0.1:")
    assert "is not a cluster" in last and "unset FLORIST_REDIS_CLUSTER" in last


# -- names and slots (no server) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ("florist:events", "{florist}:events"),
        ("events", "{events}"),
        ("{florist}:events", "{florist}:events"),
        ("a{}b", "{a{}b}".replace("{}", "")),
    ],
)
def test_tagged_names_share_a_slot_with_their_derived_keys(stream: str, expected: str) -> None:
    assert tagged(stream) == expected
    check_names(tagged(stream), Settings(stream=tagged(stream)).dead_stream)


def test_the_dead_stream_follows_the_stream_by_default() -> None:
    assert Settings().dead_stream == "florist:events:dead"
    assert Settings(stream="{florist}:events").dead_stream == "{florist}:events:dead"
    assert Settings(stream="{florist}:events", dead_stream="x").dead_stream == "x"
    assert slot("{florist}:events") == slot("{florist}:events:dead")


def test_cluster_mode_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("FLORIST_REDIS_CLUSTER", "true")
    monkeypatch.setenv("FLORIST_STREAM", "{florist}:events")
    read = Settings()
    assert read.redis_cluster is True
    assert read.dead_stream == "{florist}:events:dead"


def test_a_cluster_url_with_another_database_is_a_usage_error(capsys) -> None:
    code = main(["stats", "--redis-url", "redis://127.0.0.1:1/3", "--redis-cluster", "true"])
    assert code == 2
    assert "database 0" in capsys.readouterr().err


def _status(job_id: str, status: str) -> dict[str, str]:
    return {"v": "1", "type": "job.status", "job_id": job_id, "status": status}


def _wait(condition, what: str, timeout_s: float = 15.0) -> None:
    from tests.support import wait_until

    wait_until(condition, timeout_s, what)
