"""The Prometheus exporter: counters fed by a real Worker, gauges read from Redis at scrape."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pymongo.database import Database

from tests.redis_server import free_port
from tests.support import wait_until
from worker.consumer import Worker
from worker.entities import JOB_COLLECTION
from worker.prometheus import CachedStats, PrometheusObserver, start_exporter
from worker.settings import Settings
from worker.stats import StreamStats
from worker.store import MongoJobStore, StoreUnavailable

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "consumer": "metrics-test",
        "metrics_port": 0,
        "block_ms": 100,
    }
    values.update(overrides)
    return Settings(**values)


def scrape(observer: PrometheusObserver) -> Samples:
    """GET /metrics over HTTP and index every sample by name and labels."""
    url = f"http://127.0.0.1:{observer.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def exporter(real_redis: redis.Redis, redis_url: str) -> Iterator[PrometheusObserver]:
    observer = start_exporter(
        settings_for(redis_url), redis_client=real_redis, addr="127.0.0.1", cache_s=0
    )
    try:
        yield observer
    finally:
        observer.close()


def publish(client: redis.Redis, stream: str, fields: dict[str, str]) -> None:
    client.xadd(stream, dict[Any, Any](fields))


def test_counters_and_gauges_after_the_sample_run(
    exporter: PrometheusObserver,
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    settings = settings_for(redis_url)
    database[JOB_COLLECTION].insert_one(job_document)
    for fields in sample_entries:
        publish(real_redis, settings.stream, fields)
    publish(real_redis, settings.stream, {"v": "1", "type": "no.such.type", "job_id": "x"})
    worker = Worker(real_redis, database, settings, observers=[exporter])

    counts = worker.drain()
    samples = scrape(exporter)

    # One batch of 39: per target only the newest snapshot is written, the rest coalesced,
    # except the finishing server snapshot (with fit_end), which is always written.
    assert counts == {"applied": 5, "coalesced": 33, "invalid": 1}
    events = "florist_worker_events_total"
    assert value(samples, events, outcome="applied", type="job.status") == 1
    assert value(samples, events, outcome="applied", type="server.metrics") == 2
    assert value(samples, events, outcome="coalesced", type="server.metrics") == 13
    assert value(samples, events, outcome="applied", type="client.metrics") == 2
    assert value(samples, events, outcome="coalesced", type="client.metrics") == 20
    assert value(samples, events, outcome="invalid", type="unknown") == 1
    total = sum(v for (name, _), v in samples.items() if name == events)
    assert total == 39

    assert value(samples, "florist_worker_batch_size_count") == 1
    assert value(samples, "florist_worker_batch_size_sum") == 39
    assert value(samples, "florist_worker_batch_size_bucket", le="20.0") == 0
    assert value(samples, "florist_worker_batch_size_bucket", le="50.0") == 1
    assert value(samples, "florist_worker_apply_seconds_count") == 1
    assert value(samples, "florist_worker_apply_seconds_sum") > 0

    assert value(samples, "florist_worker_stats_up") == 1
    assert value(samples, "florist_worker_lag") == 0
    assert value(samples, "florist_worker_pending") == 0
    assert value(samples, "florist_worker_dead_letters") == 1
    assert value(samples, "florist_worker_stream_length") == 39
    assert value(samples, "florist_worker_oldest_pending_idle_seconds") == 0


def test_counters_add_up_over_batches(
    exporter: PrometheusObserver,
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    settings = settings_for(redis_url, batch_size=10)
    database[JOB_COLLECTION].insert_one(job_document)
    for fields in sample_entries:
        publish(real_redis, settings.stream, fields)

    counts = Worker(real_redis, database, settings, observers=[exporter]).drain()
    samples = scrape(exporter)

    assert value(samples, "florist_worker_batch_size_count") == 4  # 10 + 10 + 10 + 8
    assert value(samples, "florist_worker_batch_size_sum") == 38
    assert value(samples, "florist_worker_apply_seconds_count") == 4
    for outcome, count in counts.items():
        scraped = sum(
            v
            for (name, labels), v in samples.items()
            if name == "florist_worker_events_total" and ("outcome", outcome) in labels
        )
        assert scraped == count, outcome


def test_gauges_follow_the_stream_before_any_batch(
    exporter: PrometheusObserver, real_redis: redis.Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url)

    empty = scrape(exporter)
    assert value(empty, "florist_worker_stats_up") == 1
    assert value(empty, "florist_worker_pending") == 0
    assert value(empty, "florist_worker_dead_letters") == 0
    assert ("florist_worker_lag", ()) not in empty  # no group: lag is unknown, not 0

    for n in range(3):
        publish(real_redis, settings.stream, {"n": str(n)})
    real_redis.xgroup_create(settings.stream, settings.group, id="0")
    real_redis.xreadgroup(settings.group, "someone", {settings.stream: ">"}, count=1)
    real_redis.xadd(settings.dead_stream, {"dead_reason": "invalid"})
    real_redis.xadd(settings.dead_stream, {"dead_reason": "unknown_job"})

    busy = scrape(exporter)
    assert value(busy, "florist_worker_lag") == 2
    assert value(busy, "florist_worker_pending") == 1
    assert value(busy, "florist_worker_dead_letters") == 2
    assert value(busy, "florist_worker_stream_length") == 3
    assert value(busy, "florist_worker_oldest_pending_idle_seconds") >= 0
    # nothing has been consumed through the observer yet
    assert not any(name == "florist_worker_events_total" for name, _ in busy)


def test_retried_entry_shows_as_pending(
    exporter: PrometheusObserver,
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
) -> None:
    settings = settings_for(redis_url)
    publish(
        real_redis,
        settings.stream,
        {"v": "1", "type": "job.status", "job_id": "nope", "status": "IN_PROGRESS"},
    )

    Worker(real_redis, database, settings, observers=[exporter]).drain()
    samples = scrape(exporter)

    assert value(samples, "florist_worker_events_total", outcome="unknown_job", type="job.status")
    assert value(samples, "florist_worker_pending") == 1
    assert value(samples, "florist_worker_lag") == 0
    assert value(samples, "florist_worker_dead_letters") == 0


def test_a_redis_outage_does_not_break_the_scrape() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    observer = start_exporter(settings_for(url), redis_client=client, addr="127.0.0.1")
    try:
        samples = scrape(observer)
    finally:
        observer.close()

    assert value(samples, "florist_worker_stats_up") == 0
    for gauge in ("lag", "pending", "dead_letters", "stream_length"):
        assert (f"florist_worker_{gauge}", ()) not in samples


def test_start_exporter_opens_its_own_redis_client(real_redis: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    real_redis.xadd(settings.dead_stream, {"dead_reason": "invalid"})
    observer = start_exporter(settings, addr="127.0.0.1")
    try:
        samples = scrape(observer)
    finally:
        observer.close()

    assert value(samples, "florist_worker_dead_letters") == 1


def test_exporters_have_separate_registries(real_redis: redis.Redis, redis_url: str) -> None:
    first = start_exporter(settings_for(redis_url), redis_client=real_redis, addr="127.0.0.1")
    second = start_exporter(settings_for(redis_url), redis_client=real_redis, addr="127.0.0.1")
    try:
        assert first.port != second.port
        assert first.registry is not second.registry
        first.events.labels(outcome="applied", type="job.status").inc()
        events = ("florist_worker_events_total", (("outcome", "applied"), ("type", "job.status")))
        assert scrape(first)[events] == 1
        assert events not in scrape(second)
    finally:
        first.close()
        second.close()


def test_close_stops_serving(real_redis: redis.Redis, redis_url: str) -> None:
    observer = start_exporter(settings_for(redis_url), redis_client=real_redis, addr="127.0.0.1")
    port = observer.port
    observer.close()

    assert observer.port is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_start_exporter_needs_a_port(redis_url: str) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        start_exporter(settings_for(redis_url, metrics_port=None))


# -- the scrape-time cache ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls = 0
        self.fail = False

    def __call__(self) -> StreamStats:
        self.calls += 1
        if self.fail:
            raise redis.ConnectionError("down")
        return StreamStats(
            self.settings.stream,
            self.settings.group,
            self.settings.dead_stream,
            collected_at=datetime.now(UTC),
            pending=self.calls,
        )


def test_cache_limits_redis_calls_and_caches_failures(redis_url: str) -> None:
    clock = FakeClock()
    fetch = Fetcher(settings_for(redis_url))
    cache = CachedStats(fetch, max_age_s=2.0, clock=clock)

    first = cache.get()
    clock.now += 1.9
    assert cache.get() is first
    assert fetch.calls == 1

    clock.now += 0.2
    second = cache.get()
    assert second is not None and second.pending == 2

    fetch.fail = True
    clock.now += 2
    assert cache.get() is None
    clock.now += 1
    assert cache.get() is None
    assert fetch.calls == 3  # the failure was cached, not retried on every scrape

    fetch.fail = False
    clock.now += 1
    recovered = cache.get()
    assert recovered is not None and recovered.pending == 4


def test_a_cluster_client_failure_leaves_the_gauges_out_instead_of_failing_the_scrape() -> None:
    """The cluster client's own exceptions are not ``redis.RedisError``s (here one that a
    refused password caused): they are Redis failures all the same."""
    from redis.exceptions import AuthenticationError, RedisClusterException

    def fetch() -> StreamStats:
        try:
            raise AuthenticationError("invalid username-password pair")
        except AuthenticationError as error:
            raise RedisClusterException("Redis Cluster cannot be connected") from error

    assert CachedStats(fetch).get() is None


def test_the_watchdog_s_gauge_and_counter(fake_redis):
    """Issue 12: silent jobs (gauge, from the scan) and jobs finished by the watchdog
    (counter, when its finish is applied)."""
    import mongomock_ng

    from tests.conftest import load_job_document
    from tests.support import STREAM, make_worker
    from worker.watchdog import lock_key, redis_now_ms

    database = mongomock_ng.MongoClient()["prometheus-watchdog"]
    job = load_job_document()
    database["job"].insert_one(job)
    observer = PrometheusObserver()
    worker = make_worker(fake_redis, database, stale_after_s=5)
    worker.observers.append(observer)
    worker.watchdog.reachable_since_ms = 0
    start = redis_now_ms(fake_redis) - 3000
    status = {"v": "1", "type": "job.status", "job_id": job["_id"], "status": "IN_PROGRESS"}
    fake_redis.xadd(STREAM, status, id=f"{start}-0")
    beat = {"v": "1", "type": "host.heartbeat", "host_type": "server", "job_id": job["_id"]}
    fake_redis.xadd(STREAM, beat, id=f"{start}-1")
    worker.drain()
    assert worker.run_watchdog().finished == []
    sample = observer.registry.get_sample_value
    assert sample("florist_worker_silent_jobs") == 1  # 3 s: over half of the 5 s limit
    assert sample("florist_worker_watchdog_finished_jobs_total") == 0

    worker.watchdog.settings = worker.settings.model_copy(update={"stale_after_s": 2})
    fake_redis.delete(lock_key(STREAM))
    assert worker.run_watchdog().finished == [job["_id"]]
    worker.drain()
    assert sample("florist_worker_watchdog_finished_jobs_total") == 1
    fake_redis.delete(lock_key(STREAM))
    worker.run_watchdog()
    assert sample("florist_worker_silent_jobs") == 0  # finished: no longer watched


class _DownStore(MongoJobStore):
    """MongoDB that does not answer a ping."""

    def ping(self) -> None:
        raise StoreUnavailable("no MongoDB")


@pytest.mark.parametrize("mongodb_answers", [True, False])
def test_the_heartbeat_gauges_say_which_service_answered_and_when_the_loop_beat(
    exporter: PrometheusObserver,
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    tmp_path: Path,
    mongodb_answers: bool,
) -> None:
    settings = settings_for(
        redis_url, heartbeat_interval_s=0.05, heartbeat_file=tmp_path / "heartbeat"
    )
    store = MongoJobStore(database) if mongodb_answers else _DownStore(database)
    worker = Worker(real_redis, database, settings, store=store, observers=[exporter])
    before = time.time()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: ("florist_worker_service_up", (("service", "mongodb"),)) in scrape(exporter),
            timeout=30,
        )
        samples = scrape(exporter)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert value(samples, "florist_worker_service_up", service="redis") == 1
    assert value(samples, "florist_worker_service_up", service="mongodb") == (
        1 if mongodb_answers else 0
    )
    assert value(samples, "florist_worker_heartbeat_timestamp_seconds") >= before - 1
