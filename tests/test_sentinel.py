"""Redis Sentinel (``redis+sentinel://``): the worker drains through a forced failover and
through a ``kill -9`` of the primary with nothing lost and documents equal to a run on a
plain Redis; the producer publishes through Sentinel (with passwords); bad Sentinel URLs
are one clear line (exit 2); passwords never show.

Each failover test has a Sentinel setup of its own (tests/redis_sentinel.py): a primary, a
replica and three sentinels with a 1 s down-after time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mongomock_ng
import pytest
import redis
import structlog
from florist_events import EventPublisher, StreamMetricsReporter
from florist_events.urls import client_from_url
from pymongo.database import Database

from tests.redis_sentinel import LocalSentinel
from tests.redis_server import RedisServer
from tests.support import (
    STREAM,
    RecordingStore,
    SettledOutcomes,
    SlowStore,
    fixed_id,
    job_of,
    settings,
)
from tests.support import wait_until as wait
from worker.cli import main
from worker.connections import connect_redis
from worker.consumer import Worker
from worker.settings import Settings

pytestmark = pytest.mark.redis_server

A_UUID = "0c316680-1375-4e07-84c3-a732a2e6d03f"


def _publish_fixed(client: redis.Redis, entries: list[dict[str, str]]) -> list[str]:
    """The entries with the same IDs in every run, so documents compare field by field."""
    return [
        str(client.xadd(STREAM, dict(f), id=fixed_id(i)), "ascii") for i, f in enumerate(entries)
    ]


def plain_redis_document(
    tmp_path: Path, job_document: dict[str, Any], entries: list[dict[str, str]]
) -> dict[str, Any]:
    """The job document after one worker drained the entries from a plain Redis."""
    database = mongomock_ng.MongoClient()["florist-plain"]
    database["job"].insert_one(dict(job_document))
    with RedisServer(tmp_path / "plain") as server:
        client = redis.Redis.from_url(server.url)
        _publish_fixed(client, entries)
        Worker(client, database, settings(redis_url=server.url)).drain()
        client.close()
    return job_of(database, job_document["_id"])


def drain_through_a_failover(
    sentinel: LocalSentinel,
    database: Database[Any],
    tmp_path: Path,
    fail_over: Callable[[], None],
) -> tuple[float, SettledOutcomes, RecordingStore, list[dict[str, Any]]]:
    """A worker consumes the published entries through the Sentinel URL while
    ``fail_over`` runs mid-run; returns the seconds from the failover to drained, what
    was settled, the store and the logs."""
    worker_settings = settings(
        redis_url=sentinel.url(),
        batch_size=2,
        block_ms=200,
        socket_timeout_s=1.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        heartbeat_file=tmp_path / "heartbeat",
    )
    client = connect_redis(worker_settings)
    published = [entry_id for entry_id, _ in client.xrange(STREAM)]
    store, settled = SlowStore(database, delay_s=0.08), SettledOutcomes()
    worker = Worker(client, None, worker_settings, store=store, observers=[settled])
    failures: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as error:  # noqa: BLE001 (reported by the assertion below)
            failures.append(error)

    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            wait(lambda: len(settled.ids()) >= 6, 20, "the worker to be under way")
            assert len(settled.ids()) < len(published), "the run ended before the failover"
            started = time.monotonic()
            fail_over()
            wait(
                lambda: _drained(sentinel, published[-1].decode()) or not thread.is_alive(),
                45,
                "every entry to be delivered and acknowledged on the new primary",
            )
            drained_s = time.monotonic() - started
            assert not failures, failures
        finally:
            worker.stop()
            thread.join(timeout=15)
            client.close()
    assert not thread.is_alive()
    return drained_s, settled, store, logs


def _drained(sentinel: LocalSentinel, last_id: str) -> bool:
    """On the primary the sentinels name now (a demoted one may still answer for a
    while): the group has read up to ``last_id`` and has nothing pending."""
    try:
        client = sentinel.data_client(sentinel.primary())
    except RuntimeError:  # the sentinels do not agree yet
        return False
    try:
        (group,) = client.xinfo_groups(STREAM)
    except redis.RedisError:
        return False
    finally:
        client.close()
    return group["pending"] == 0 and group["last-delivered-id"].decode() == last_id


def assert_nothing_lost(
    database: Database[Any],
    job_document: dict[str, Any],
    expected: dict[str, Any],
    settled: SettledOutcomes,
    store: RecordingStore,
    entries: list[dict[str, str]],
) -> None:
    assert job_of(database, job_document["_id"]) == expected
    assert len(settled.ids()) == len(entries)
    assert store.applied_twice() == []
    for entry_id, outcomes in settled.outcomes.items():
        effective = [o for o in outcomes if o in ("applied", "coalesced")]
        assert len(effective) == 1, (entry_id, outcomes)
        assert set(outcomes) <= {"applied", "coalesced", "duplicate"}, (entry_id, outcomes)


FAILOVERS = [
    pytest.param("SENTINEL FAILOVER", False, id="sentinel-failover"),
    pytest.param("kill -9 of the primary", False, id="kill-9"),
    pytest.param("SENTINEL FAILOVER", True, id="sentinel-failover-min-replicas"),
]


@pytest.mark.parametrize(("failover", "min_replicas"), FAILOVERS)
def test_a_failover_mid_run_loses_nothing(
    failover: str,
    min_replicas: bool,
    tmp_path: Path,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    expected = plain_redis_document(tmp_path, job_document, sample_entries)
    database["job"].insert_one(dict(job_document))
    with LocalSentinel(tmp_path / "sentinel") as sentinel:
        if min_replicas:
            require_a_replica(sentinel)
        producer = client_from_url(sentinel.url())
        _publish_fixed(producer, sample_entries)
        producer.close()
        sentinel.wait_replicated()
        old = sentinel.primary()

        def fail_over() -> None:
            if failover == "SENTINEL FAILOVER":
                sentinel.force_failover()
            else:
                old.kill()
            sentinel.wait_failed_over(old)

        drained_s, settled, store, logs = drain_through_a_failover(
            sentinel, database, tmp_path, fail_over
        )
    assert_nothing_lost(database, job_document, expected, settled, store, sample_entries)
    print(f"{failover} to drained: {drained_s:.1f} s")  # the figure the docs quote
    events = [entry["event"] for entry in logs]
    assert "outage: backing off, acknowledging nothing" in events  # the failover, waited out
    assert "outage over" in events
    assert "re-reading this consumer's pending entries after a Redis Sentinel outage" in events


def require_a_replica(sentinel: LocalSentinel) -> None:
    """``min-replicas-to-write 1`` on both data nodes, in effect on the primary."""
    for node in sentinel.data_nodes:
        client = sentinel.data_client(node)
        client.config_set("min-replicas-to-write", 1)
        client.config_set("min-replicas-max-lag", 10)
        client.close()
    primary = sentinel.data_client(sentinel.primary())
    wait(lambda: primary.info("replication").get("min_slaves_good_slaves") == 1, 10)
    primary.close()


# -- the producer -----------------------------------------------------------------------------


def test_the_producer_publishes_through_sentinel_with_passwords(tmp_path: Path) -> None:
    with LocalSentinel(
        tmp_path / "sentinel", password="data-secret", sentinel_password="sentinel-secret"
    ) as sentinel:
        url = sentinel.url()
        assert ":data-secret@" in url
        publisher = EventPublisher.from_url(url, STREAM, sentinel_password="sentinel-secret")
        reporter = StreamMetricsReporter(
            url=url,
            run_id=A_UUID,
            sentinel_password="sentinel-secret",
            stream=STREAM,
            heartbeat_interval_s=None,
        )
        worker_client = connect_redis(
            Settings(redis_url=url, redis_sentinel_password="sentinel-secret")
        )
        try:
            entry_id = publisher.status("job-1", "IN_PROGRESS")
            reporter.initialize()
            reporter.report({"fit_start": "t", "host_type": "server"})
            reporter.shutdown()
            assert not reporter.pending
            entries = worker_client.xrange(STREAM)
            assert entries[0][0].decode() == entry_id
            assert entries[-1][1][b"server_uuid"] == A_UUID.encode()
            assert worker_client.get(A_UUID) is not None  # FLorist's snapshot key
            primary = sentinel.data_client(sentinel.primary())
            assert primary.xlen(STREAM) == 2  # on the primary the sentinels name
            primary.close()
        finally:
            publisher.close()
            reporter.publisher.close()
            worker_client.close()

        unauthorised = EventPublisher.from_url(url, STREAM)  # no sentinel password
        with pytest.raises(redis.ConnectionError, match="No master found"):
            unauthorised.status("job-1", "IN_PROGRESS")
        unauthorised.close()


def test_with_min_replicas_to_write_a_forced_failover_refuses_a_publish_but_loses_none(
    tmp_path: Path,
) -> None:
    """After ``SENTINEL FAILOVER`` the old primary stays writable until the sentinels
    reconfigure it (~10 s): a producer still connected to it would add entries that are
    lost. With ``min-replicas-to-write 1`` it refuses them (NOREPLICAS) instead, and the
    producer's next attempts land on the new primary."""
    with LocalSentinel(tmp_path / "sentinel") as sentinel:
        require_a_replica(sentinel)
        publisher = EventPublisher.from_url(sentinel.url(), STREAM)
        first = publisher.status("job-1", "IN_PROGRESS")  # connected to the old primary
        old = sentinel.primary()
        sentinel.force_failover()
        new = sentinel.wait_failed_over(old)
        refusals: list[str] = []
        deadline = time.monotonic() + 40
        while True:
            try:
                second = publisher.status("job-1", "FINISHED_SUCCESSFULLY")
                break
            except redis.RedisError as error:  # what a reporter logs, keeping the snapshot
                refusals.append(f"{type(error).__name__}: {error}")
                assert time.monotonic() < deadline, refusals[-3:]
                time.sleep(0.2)
        publisher.close()
        assert refusals and "NOREPLICAS" in refusals[0]
        client = sentinel.data_client(new)
        ids = [entry_id.decode() for entry_id, _ in client.xrange(STREAM)]
        client.close()
        assert ids == [first, second]


# -- the command line ---------------------------------------------------------------------------


def test_the_commands_work_through_a_sentinel_url_with_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalSentinel(
        tmp_path / "sentinel", password="data-secret", sentinel_password="sentinel-secret"
    ) as sentinel:
        monkeypatch.setenv("FLORIST_REDIS_URL", sentinel.url())
        monkeypatch.setenv("FLORIST_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
        assert main(["emit", "status", "--job", "job-1", "--status", "IN_PROGRESS"]) == 0
        entry_id = capsys.readouterr().out.strip()
        assert main(["dlq", "list"]) == 0
        assert main(["stats", "--json"]) == 0
        out, err = capsys.readouterr()
        assert "data-secret" not in out + err and "sentinel-secret" not in out + err
        primary = sentinel.data_client(sentinel.primary())
        assert primary.xrange(STREAM)[0][0].decode() == entry_id
        primary.close()


COMMANDS = {
    "run": ["run"],
    "replay": ["replay"],
    "dlq": ["dlq", "list"],
    "stats": ["stats"],
    "emit": ["emit", "status", "--job", "j", "--status", "IN_PROGRESS"],
    "demo": ["demo", "--fast"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_a_malformed_sentinel_url_with_one_line_and_exit_2(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLORIST_REDIS_URL", raising=False)
    argv = [*COMMANDS[command], "--redis-url", "redis+sentinel://:hunter2@s1:26379,s2:x/svc/0"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"florist-worker {command}: error: invalid settings: redis_url")
    assert "bad sentinel address 's2:x'" in lines[0]
    assert "hunter2" not in err + out


def test_a_sentinel_url_with_cluster_mode_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["stats", "--redis-url", "redis+sentinel://s1:26379/svc", "--redis-cluster", "true"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "Sentinel watches one primary, not a Redis Cluster" in lines[0]
