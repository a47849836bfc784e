"""Stream integrity on real Redis: the true lag after a failover, entries trimmed before
the group read them, and an entry ID far ahead of Redis's clock, as the worker's summary,
``florist-worker stats`` and the Prometheus exporter report them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo.database import Database
from structlog.testing import capture_logs

from tests.redis_cluster import LocalCluster
from tests.redis_server import RedisServer
from tests.support import STREAM, WorkerThread, publish, settings, wait_until
from tests.test_prometheus import Samples, scrape, value
from worker import deadletter, stream_health
from worker.cli import main
from worker.connections import connect_redis
from worker.consumer import Worker
from worker.prometheus import PrometheusObserver
from worker.settings import Settings
from worker.stats import collect_stats, render_stats
from worker.stream import GroupStream
from worker.watchdog import redis_now_ms

INVALID = {"v": "1", "type": "no.such.type", "job_id": "x"}  # read, then dead-lettered
LOST = "stream entries lost: trimmed or deleted before the group read them"
AHEAD = "stream entry ID ahead of Redis's clock"
STALE = "Redis's lag counts entries the group will never read"


@pytest.fixture(autouse=True)
def _no_configured_mongodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stats`` reads jobs from FLORIST_MONGODB_URI: the in-memory one, so no test waits
    for a MongoDB that is not there."""
    monkeypatch.setenv("FLORIST_MONGODB_URI", "memory://")


def _settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": url, "block_ms": 200, "socket_timeout_s": 2.0}
    values.update(overrides)
    return settings(**values)


def _stats_json(url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``florist-worker stats --json`` through the command line's entry point."""
    capsys.readouterr()
    assert main(["stats", "--json", "--redis-url", url]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def _summaries(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "summary"]


def _events(logs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"].startswith(prefix)]


@pytest.fixture
def exporter() -> Iterator[PrometheusObserver]:
    observer = PrometheusObserver()
    yield observer
    observer.close()


def _serve(observer: PrometheusObserver, client: redis.Redis, url: str) -> None:
    observer.watch_stream(client, _settings(url), cache_s=0)
    observer.serve(0, "127.0.0.1")


# -- the true lag after a failover --------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two private redis-server processes: a primary and the replica-to-be."""
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica")
    primary.start()
    try:
        replica.start()
        try:
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


def _attach(primary: RedisServer, replica: redis.Redis) -> None:
    """Make ``replica`` a replica of ``primary`` and wait for its first (full) sync: it
    copies the group as it is, ``entries-read`` included."""
    redis.Redis.from_url(primary.url).config_set("repl-diskless-sync-delay", 0)
    replica.replicaof("127.0.0.1", primary.port)
    wait_until(
        lambda: replica.info("replication").get("master_link_status") == "up",
        timeout=30,
        what="the replica's first sync",
    )


def test_after_a_failover_the_summary_stats_and_prometheus_count_the_true_lag(
    servers: tuple[RedisServer, RedisServer],
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
    exporter: PrometheusObserver,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    primary, replica = servers
    old = redis.Redis.from_url(primary.url, socket_timeout=5)
    new = redis.Redis.from_url(replica.url, socket_timeout=5)
    database["job"].insert_one(job_document)
    publish(old, sample_entries[:10])
    assert sum(Worker(old, database, _settings(primary.url)).drain().values()) == 10
    _attach(primary, new)  # a replica attached while the group runs
    publish(old, sample_entries[10:])
    assert sum(Worker(old, database, _settings(primary.url)).drain().values()) == 28
    assert old.wait(1, 10_000) == 1  # the replica has every write
    wait_until(
        lambda: (
            new.xinfo_groups(STREAM)[0]["last-delivered-id"]
            == old.xinfo_groups(STREAM)[0]["last-delivered-id"]
        ),
        what="the group's position on the replica",
    )

    new.replicaof("NO", "ONE")  # the replica is promoted: the group read everything

    redis_lag = new.xinfo_groups(STREAM)[0]["lag"]
    if redis_lag == 0:
        pytest.skip("this Redis replicates the group's entries-read (7.4+): nothing to show")
    assert redis_lag == 28  # XINFO's lag on the new primary: the last 28 are unread, it says
    stats = collect_stats(new, _settings(replica.url))
    assert stats.lag == 0 and stats.health is not None
    assert (stats.health.redis_lag, stats.health.gone_unread) == (28, 28)
    assert "lag 0 (counted; Redis's XINFO says 28)" in render_stats(stats)
    assert _stats_json(replica.url, capsys)["lag"] == 0
    _serve(exporter, new, replica.url)
    samples = scrape(exporter)
    assert value(samples, "florist_worker_lag") == 0
    assert value(samples, "florist_worker_lag_exact") == 1
    assert value(samples, "florist_worker_redis_lag") == 28
    running = Worker(new, database, _settings(replica.url, heartbeat_file=tmp_path / "beat"))
    with capture_logs() as logs, WorkerThread(running):
        pass
    assert [line["lag"] for line in _summaries(logs)] == [0]
    assert [line["gone_unread"] for line in _events(logs, STALE)] == [28]
    assert _events(logs, LOST) == []  # a stale counter is said to be one, never a loss

    publish(new, [INVALID] * 3)  # three entries no worker has read yet

    stats = collect_stats(new, _settings(replica.url))
    assert (stats.lag, stats.health and stats.health.redis_lag) == (3, 31)
    assert _stats_json(replica.url, capsys)["lag"] == 3
    samples = scrape(exporter)
    assert value(samples, "florist_worker_lag") == 3
    assert value(samples, "florist_worker_stream_entries_lost_total") == 0
    with capture_logs() as logs:
        Worker(new, database, _settings(replica.url))._log_summary()
    assert [line["lag"] for line in _summaries(logs)] == [3]

    Worker(new, database, _settings(replica.url)).drain()  # read on the new primary

    assert new.xinfo_groups(STREAM)[0]["lag"] == 28  # Redis's figure stays off by 28
    assert collect_stats(new, _settings(replica.url)).lag == 0
    assert value(scrape(exporter), "florist_worker_lag") == 0
    old.close()
    new.close()


# -- entries trimmed before the group read them --------------------------------------------


def _gone_unread(samples: Samples) -> float:
    return value(samples, "florist_worker_stream_gone_unread")


def test_a_trim_past_unread_entries_is_reported_as_lost(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    exporter: PrometheusObserver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(real_redis, [INVALID] * 5)
    worker = Worker(real_redis, database, _settings(redis_url))
    worker.drain()
    _serve(exporter, real_redis, redis_url)
    assert value(scrape(exporter), "florist_worker_stream_entries_lost_total") == 0
    assert worker.stream.health().gone_unread == 0  # the worker's first reading

    publish(real_redis, [INVALID] * 4)  # not read yet...
    real_redis.xadd(STREAM, dict[Any, Any](INVALID), maxlen=0, approximate=False)  # ...trimmed

    with capture_logs() as logs:
        health = worker.stream.health()
    assert (health.lag, health.gone_unread) == (0, 5)  # the trimming entry is lost too
    assert [line["lost"] for line in _events(logs, LOST)] == [5]
    stats = collect_stats(real_redis, _settings(redis_url))
    assert "gone unread 5: added after the group's reads" in render_stats(stats)
    assert _stats_json(redis_url, capsys)["health"]["gone_unread"] == 5
    samples = scrape(exporter)
    assert value(samples, "florist_worker_stream_entries_lost_total") == 5
    assert _gone_unread(samples) == 5

    publish(real_redis, [INVALID] * 2)  # life goes on: read, and nothing more is lost
    worker.drain()
    with capture_logs() as logs:
        assert worker.stream.health().gone_unread == 5
    assert _events(logs, LOST) == []
    assert value(scrape(exporter), "florist_worker_stream_entries_lost_total") == 5


def test_dead_letters_requeued_and_dropped_and_a_trim_of_read_entries_lose_nothing(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    settings = _settings(redis_url)
    publish(real_redis, [INVALID] * 6)
    worker = Worker(real_redis, database, settings)
    worker.drain()
    first = worker.stream.health()
    with capture_logs() as logs:
        assert deadletter.requeue(real_redis, settings=settings) == 6  # XADD + XDEL
        worker.drain()  # dead-lettered again (XADD + XACK)
        assert deadletter.drop(real_redis, None, settings=settings) == 6  # XDEL
        real_redis.xadd(STREAM, dict[Any, Any](INVALID), maxlen=2, approximate=False)
        worker.drain()  # the producer's MAXLEN trimmed only entries the group had read
        last = worker.stream.health()
    assert (first.gone_unread, last.gone_unread, last.lag) == (0, 0, 0)
    assert real_redis.xlen(STREAM) == 2
    assert worker.stream.losses.lost_total == 0
    assert _events(logs, LOST) == [] and _events(logs, STALE) == []


def test_a_group_behind_the_first_entry_has_the_stream_length_as_lag(
    real_redis: redis.Redis, redis_url: str
) -> None:
    publish(real_redis, [INVALID] * 6)
    real_redis.xgroup_create(STREAM, "florist-worker", id="0")
    real_redis.xreadgroup("florist-worker", "reader", {STREAM: ">"}, count=1)
    real_redis.xtrim(STREAM, maxlen=3, approximate=False)  # the one read and two unread

    health = GroupStream(real_redis, _settings(redis_url)).health()

    assert (health.lag, health.lag_exact, health.redis_lag, health.gone_unread) == (3, True, 5, 2)


def test_beyond_the_count_limit_the_lag_is_redis_s_estimate(
    real_redis: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_health, "LAG_COUNT_LIMIT", 5)
    publish(real_redis, [INVALID] * 12)
    real_redis.xgroup_create(STREAM, "florist-worker", id="0")
    real_redis.xreadgroup("florist-worker", "reader", {STREAM: ">"}, count=2)

    stats = collect_stats(real_redis, _settings(redis_url))

    assert stats.health is not None
    assert (stats.lag, stats.health.lag_exact, stats.health.gone_unread) == (10, False, None)
    assert "lag about 10 (Redis's count: too many undelivered entries to count)" in render_stats(
        stats
    )


# -- entry IDs ahead of Redis's clock -------------------------------------------------------


def test_an_entry_id_a_day_ahead_is_reported_and_one_within_the_limit_is_not(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    exporter: PrometheusObserver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = Worker(real_redis, database, _settings(redis_url, max_entry_ahead_s=300))
    worker.drain()  # the group exists
    now_ms = redis_now_ms(real_redis)
    real_redis.xadd(STREAM, dict[Any, Any](INVALID), id=f"{now_ms + 60_000}-0")
    with capture_logs() as logs:
        soon = worker.stream.health()
    assert 50 < soon.ahead_s <= 60 and not soon.too_far_ahead
    assert _events(logs, AHEAD) == []

    real_redis.xadd(STREAM, dict[Any, Any](INVALID), id=f"{now_ms + 86_400_000}-0")
    later: Any = real_redis.xadd(STREAM, dict[Any, Any](INVALID))  # an ordinary XADD *

    assert int(later.split(b"-")[0]) == now_ms + 86_400_000  # pushed a day ahead too
    with capture_logs() as logs:
        health = worker.stream.health()
    assert health.too_far_ahead and 86_390 < health.ahead_s <= 86_400
    [warning] = _events(logs, AHEAD)
    assert warning["log_level"] == "warning" and warning["limit_s"] == 300
    assert warning["last_generated_id"] == later.decode()
    text = render_stats(collect_stats(real_redis, _settings(redis_url)))
    assert f"last ID {later.decode()} is 24.0 h ahead of Redis's clock" in text
    assert _stats_json(redis_url, capsys)["health"]["ahead_s"] > 86_390
    _serve(exporter, real_redis, redis_url)
    samples = scrape(exporter)
    assert value(samples, "florist_worker_stream_entry_ahead_seconds") > 86_390
    assert value(samples, "florist_worker_stream_entry_ahead_limit_seconds") == 300


# -- in a Redis Cluster ---------------------------------------------------------------------


@pytest.mark.redis_cluster
def test_in_a_cluster_the_reading_comes_from_the_node_of_the_stream_s_slot(
    tmp_path: Path, database: Database[Any]
) -> None:
    stream = "{integrity}:events"
    with LocalCluster(tmp_path / "cluster") as cluster:
        values = _settings(cluster.url, redis_cluster=True, stream=stream)
        client = connect_redis(values)
        try:
            client.xadd(stream, dict[Any, Any](INVALID))
            worker = Worker(client, database, values)
            worker.drain()
            assert worker.stream.health().gone_unread == 0  # the first reading
            client.xadd(stream, dict[Any, Any](INVALID))  # unread...
            client.xadd(stream, dict[Any, Any](INVALID), maxlen=0, approximate=False)  # trimmed

            with capture_logs() as logs:
                health = worker.stream.health()

            node: Any = client.get_node_from_key(stream)  # type: ignore[attr-defined]
            run_id = client.info("server", target_nodes=node)["run_id"]  # type: ignore[call-arg]
            assert health.server is not None and health.server.startswith(f"{run_id}/")
            assert (health.lag, health.gone_unread) == (0, 2)
            assert [line["lost"] for line in _events(logs, LOST)] == [2]
        finally:
            client.close()
