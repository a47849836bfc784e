"""Prometheus metrics: what the worker did (counters, histograms) and how far behind it is.

Event counters and batch histograms are fed by the consume loop through
:meth:`PrometheusObserver.batch_settled`. Lag, pending entries and dead letters
are not the loop's to count (other workers share the group; dead letters are
requeued): they are read from Redis when Prometheus scrapes, through
:func:`worker.stats.collect_stats`, cached briefly so that several scrapers do not
multiply the load, and left out (with ``florist_worker_stats_up 0``) while Redis does
not answer, so a scrape never fails because of an outage.

Each exporter has its own ``CollectorRegistry``: nothing is registered globally, so
tests (or one process embedding several workers) can create as many as they like.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from wsgiref.simple_server import WSGIServer

import redis
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from worker.connections import connect_redis
from worker.observers import BatchObserver, Settled
from worker.outcomes import Outcome
from worker.redis_failures import classify, describe
from worker.settings import Settings
from worker.stats import StreamStats, collect_stats
from worker.stream_health import LAG_COUNT_LIMIT, LossWatch, StreamHealth
from worker.watchdog import MARKER_FIELD, ScanReport

log = structlog.get_logger(__name__)

PREFIX = "florist_worker"
STATS_CACHE_S = 2.0
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
APPLY_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DEFAULT_ADDR = "0.0.0.0"  # noqa: S104 (scraped from outside the container)


class CachedStats:
    """``collect_stats`` at most once per ``max_age_s``; a failure is cached too, so an
    outage is not hammered by every scrape. ``get()`` is ``None`` while Redis fails."""

    def __init__(
        self,
        fetch: Callable[[], StreamStats],
        max_age_s: float = STATS_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched_at: float | None = None
        self._value: StreamStats | None = None
        self._failing = False

    def get(self) -> StreamStats | None:
        with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self._max_age_s:
                return self._value
            self._fetched_at = now
            try:
                self._value = self._fetch()
            except Exception as error:
                if classify(error) is None:
                    raise
                self._value = None
                if not self._failing:
                    log.warning("metrics: stream stats unavailable", error=describe(error))
                self._failing = True
            else:
                if self._failing:
                    log.info("metrics: stream stats available again")
                self._failing = False
            return self._value


class StreamCollector:
    """Gauges computed at scrape time from a (cached) stats snapshot, and the entries
    lost that ``losses`` counted from those snapshots."""

    def __init__(self, stats: CachedStats, losses: LossWatch) -> None:
        self.stats = stats
        self.losses = losses

    def describe(self) -> Iterable[Metric]:
        """Names only, so registering never touches Redis."""
        return [*self._families(), *_integrity_families(), self._lost()]

    def collect(self) -> Iterable[Metric]:
        stats = self.stats.get()
        integrity = _integrity_families()
        if stats is not None and stats.health is not None:
            _add_integrity(integrity, stats.health)
        return [*self._stream_families(stats), *integrity, self._lost()]

    def _lost(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            f"{PREFIX}_stream_entries_lost",
            "entries trimmed or deleted before the group read them, as this exporter saw "
            f"{PREFIX}_stream_gone_unread grow on one Redis server (a failover starts over; "
            "every worker's exporter counts the same losses: use max() across workers)",
            value=self.losses.lost_total,
        )

    def _stream_families(self, stats: StreamStats | None) -> list[GaugeMetricFamily]:
        families = self._families()
        up, lag, pending, dead, length, oldest = families
        up.add_metric([], 0 if stats is None else 1)
        if stats is not None:
            if stats.lag is not None:  # unknown lag is left out, never reported as 0
                lag.add_metric([], stats.lag)
            pending.add_metric([], stats.pending)
            dead.add_metric([], stats.dead_letters)
            length.add_metric([], stats.length)
            idle_ms = stats.oldest_pending_idle_ms
            oldest.add_metric([], 0 if idle_ms is None else idle_ms / 1000)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                f"{PREFIX}_stats_up", "1 if the stream stats below could be read from Redis"
            ),
            GaugeMetricFamily(
                f"{PREFIX}_lag",
                "entries of the stream after the group's last-delivered-id, counted (Redis's "
                f"XINFO lag is {PREFIX}_redis_lag); absent when unknown",
            ),
            GaugeMetricFamily(
                f"{PREFIX}_pending", "entries delivered to the group but not yet acknowledged"
            ),
            GaugeMetricFamily(f"{PREFIX}_dead_letters", "entries in the dead-letter stream"),
            GaugeMetricFamily(f"{PREFIX}_stream_length", "entries in the events stream"),
            GaugeMetricFamily(
                f"{PREFIX}_oldest_pending_idle_seconds",
                "idle time of the oldest pending entry (0 when none is pending)",
            ),
        ]


def _integrity_families() -> list[GaugeMetricFamily]:
    return [
        GaugeMetricFamily(
            f"{PREFIX}_lag_exact",
            f"1 if {PREFIX}_lag was counted entry by entry, 0 if it is an estimate (over "
            f"{LAG_COUNT_LIMIT:,} undelivered entries)",
        ),
        GaugeMetricFamily(
            f"{PREFIX}_redis_lag",
            "the group's lag as Redis's XINFO GROUPS reports it (too high after a failover "
            "on Redis before 7.4, and when entries were trimmed before delivery)",
        ),
        GaugeMetricFamily(
            f"{PREFIX}_stream_gone_unread",
            "entries added after the group's reads that it will never read: trimmed or "
            "deleted before delivery, or Redis's read counter left stale by a failover",
        ),
        GaugeMetricFamily(
            f"{PREFIX}_stream_entry_ahead_seconds",
            "how far the stream's last entry ID is ahead of Redis's clock (0 when it is not)",
        ),
        GaugeMetricFamily(
            f"{PREFIX}_stream_entry_ahead_limit_seconds",
            "FLORIST_MAX_ENTRY_AHEAD_S: an entry further ahead is reported",
        ),
    ]


def _add_integrity(families: list[GaugeMetricFamily], health: StreamHealth) -> None:
    exact, redis_lag, gone, ahead, limit = families
    if health.lag is not None:
        exact.add_metric([], 1 if health.lag_exact else 0)
    if health.redis_lag is not None:
        redis_lag.add_metric([], health.redis_lag)
    if health.gone_unread is not None:
        gone.add_metric([], health.gone_unread)
    ahead.add_metric([], health.ahead_s)
    limit.add_metric([], health.ahead_limit_s)


class PrometheusObserver(BatchObserver):
    """A :class:`worker.observers.BatchObserver` that counts into its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            f"{PREFIX}_events",
            "entries handled, by outcome and event type (unknown when unparsable)",
            ["outcome", "type"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "entries per settled batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.round_trips = Counter(
            f"{PREFIX}_mongodb_round_trips",
            "MongoDB round trips made to apply events (per 1,000 events: divide by "
            f"{PREFIX}_events_total and multiply by 1,000)",
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            f"{PREFIX}_apply_seconds",
            "time to apply and settle one batch, outage waits included",
            buckets=APPLY_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.silent_jobs = Gauge(
            f"{PREFIX}_silent_jobs",
            "IN_PROGRESS jobs whose FL server has been silent for at least half of "
            "FLORIST_STALE_AFTER_S, as of this worker's last watchdog scan (workers take "
            "turns: use max() across workers)",
            registry=self.registry,
        )
        self.watchdog_finishes = Counter(
            f"{PREFIX}_watchdog_finished_jobs",
            "jobs finished by the watchdog (its job.status event applied by this worker)",
            registry=self.registry,
        )
        self.service_up = Gauge(
            f"{PREFIX}_service_up",
            "1 if the service answered at this worker's last heartbeat, 0 if not",
            ["service"],
            registry=self.registry,
        )
        self.heartbeat_time = Gauge(
            f"{PREFIX}_heartbeat_timestamp_seconds",
            "when this worker's consume loop last wrote its heartbeat (Unix time): a loop "
            "that hangs stops moving it while the exporter still answers",
            registry=self.registry,
        )
        self.server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def batch_settled(self, results: Sequence[Settled], seconds: float) -> None:
        marker = MARKER_FIELD.encode()
        for item, outcome in results:
            self.events.labels(outcome=outcome.value, type=item.event_type).inc()
            fields = item.entry.fields
            if outcome is Outcome.APPLIED and fields is not None and marker in fields:
                self.watchdog_finishes.inc()
        self.batch_size.observe(len(results))
        self.apply_seconds.observe(seconds)

    def heartbeat(self, redis_ok: bool, mongodb_ok: bool) -> None:
        self.service_up.labels(service="redis").set(1 if redis_ok else 0)
        self.service_up.labels(service="mongodb").set(1 if mongodb_ok else 0)
        self.heartbeat_time.set_to_current_time()

    def watchdog_scanned(self, report: ScanReport) -> None:
        """Told what a watchdog scan of this worker saw."""
        self.silent_jobs.set(report.silent)

    def mongodb_round_trips(self, count: int) -> None:
        """Told how many round trips the store made since the last batch."""
        self.round_trips.inc(count)

    def watch_stream(
        self, redis_client: redis.Redis, settings: Settings, cache_s: float = STATS_CACHE_S
    ) -> None:
        """Add the scrape-time gauges (lag, pending, dead letters, ...) for this stream."""
        losses = LossWatch(announce=False)  # the worker's summary says it in the log

        def fetch() -> StreamStats:
            stats = collect_stats(redis_client, settings, count_reasons=False)
            if stats.health is not None:
                losses.observe(stats.health)
            return stats

        self.registry.register(StreamCollector(CachedStats(fetch, cache_s), losses))

    def serve(self, port: int, addr: str = DEFAULT_ADDR) -> int:
        """Serve ``/metrics`` from a daemon thread; returns the port (useful with 0)."""
        self.server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self.server.server_port)

    @property
    def port(self) -> int | None:
        return None if self.server is None else int(self.server.server_port)

    def close(self) -> None:
        """Stop serving (the worker does not need this: the thread is a daemon)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def start_exporter(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    addr: str = DEFAULT_ADDR,
    cache_s: float = STATS_CACHE_S,
) -> PrometheusObserver:
    """Serve ``/metrics`` on ``settings.metrics_port`` and return the observer to pass to
    the :class:`~worker.consumer.Worker`. Stream gauges use their own Redis client
    unless one is given, so a slow scrape never waits on the worker's connection."""
    if settings.metrics_port is None:
        raise ValueError("start_exporter needs settings.metrics_port")
    observer = PrometheusObserver()
    observer.watch_stream(redis_client or connect_redis(settings), settings, cache_s)
    port = observer.serve(settings.metrics_port, addr)
    log.info("metrics served", port=port, path="/metrics")
    return observer
