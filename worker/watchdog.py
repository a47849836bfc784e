"""The watchdog: a job whose FL server went silent is finished with an error.

A job that is ``IN_PROGRESS`` and whose server has not been heard from (no metrics
event, no ``host.heartbeat``) for longer than ``FLORIST_STALE_AFTER_S`` is finished as
``FINISHED_WITH_ERROR``. The rule, and why it never reaps a live job:

* **Silence is measured in stream time, against how far the group has consumed.** The
  job document holds ``server_last_event_ms``: the milliseconds of the last applied
  server event's position (:mod:`worker.effects`). The watchdog compares it with the
  *horizon*: the time of the oldest entry the group has not finished with (the oldest
  pending entry, or the first one after ``last-delivered-id``), or Redis's own clock
  (TIME) when the group is caught up. Every entry before the horizon has taken effect,
  so a server event written before it is already on the document: a backlog or a
  worker outage only holds the horizon back, it never makes a job look silent.
* **This watchdog must have had Redis for the whole silence.** Silence counts from the
  later of the last server event and the moment this watchdog first reached Redis (its
  start, or the end of a Redis outage it saw): after a Redis outage, reporters need a
  moment to publish again, so a job is never reaped before a full limit has passed with
  Redis up.
* **A job with no event at all from its server** (the API set ``IN_PROGRESS``, the
  server process died before its first report) is timed from when this watchdog first
  saw it ``IN_PROGRESS`` (at the horizon), kept in memory: it is finished a full limit
  after that, with a message that says so.
* **The finish is an event.** The watchdog does not write the document: it XADDs a
  ``job.status FINISHED_WITH_ERROR`` entry with an ``error_message`` and the marker
  field ``watchdog`` (the consumer's name), which every worker applies like any other
  event. So the first finish in the stream wins (a ``fit_end`` still pending before it
  wins; a late one after it keeps the watchdog's status and still stores its metrics),
  two watchdogs cannot finish a job twice (the second finish is a ``duplicate``), and
  ``replay`` of the stream rebuilds the same document.
* **One scan at a time.** A scan first takes the lock ``<stream>:watchdog`` (SET NX PX
  for one interval; the key shares the stream's hash tag): the workers of a group take
  turns instead of all scanning.

A client that goes silent finishes nothing (its age is in :class:`JobLiveness`): the
server decides what a lost client means. The watchdog never raises into the consume
loop: an outage or a failure is logged and the scan skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import redis
import structlog
from florist_events import EventPublisher, status_fields
from pymongo.errors import PyMongoError

from worker.document import CLIENT_LAST_EVENT, SERVER_LAST_EVENT
from worker.entities import JobStatus
from worker.positions import StreamPosition
from worker.redis_failures import RedisFailure, classify, describe, is_group_missing
from worker.settings import Settings

log = structlog.get_logger(__name__)

MARKER_FIELD: Final = "watchdog"  # on the finishing entry: the consumer that wrote it
# A job counts as "silent" (Prometheus gauge, stats flag) from this share of the limit.
NEAR_LIMIT: Final = 0.5
FIRST_SEEN_LIMIT: Final = 100_000

LIVENESS_PROJECTION: Final = {
    "status": 1,
    SERVER_LAST_EVENT: 1,
    "clients_info.uuid": 1,
    f"clients_info.{CLIENT_LAST_EVENT}": 1,
}


def lock_key(stream: str) -> str:
    """``<stream>:watchdog``: derived from the stream, so it keeps its hash tag."""
    return f"{stream}:watchdog"


def iso(milliseconds: int) -> str:
    """Stream time as ISO 8601 UTC, to the second (``2026-11-30T12:00:00Z``)."""
    moment = datetime.fromtimestamp(milliseconds / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def redis_now_ms(client: redis.Redis) -> int:
    """Redis's clock (TIME), the clock entry IDs are made with."""
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def consumed_horizon(client: redis.Redis, stream: str, group: str, now_ms: int) -> int | None:
    """Stream time up to which the group has applied every entry: the time of the oldest
    pending or undelivered entry, else ``now_ms``. ``None`` without a stream or group."""
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError as error:
        if is_group_missing(error):
            return None
        raise
    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return None
    horizon = now_ms
    delivered = StreamPosition.parse(_text(info.get("last-delivered-id") or "0-0"))
    after = (
        f"{delivered.milliseconds}-{delivered.sequence + 1}"
        if delivered.sequence < 2**64 - 1
        else f"{delivered.milliseconds + 1}-0"
    )
    undelivered: Any = client.xrange(stream, min=after, max="+", count=1)
    if undelivered:
        horizon = min(horizon, StreamPosition.parse(_text(undelivered[0][0])).milliseconds)
    summary: Any = client.xpending(stream, group)
    oldest = summary.get("min") if int(summary.get("pending") or 0) else None
    if oldest is not None:
        horizon = min(horizon, StreamPosition.parse(_text(oldest)).milliseconds)
    return horizon


@dataclass(frozen=True, slots=True)
class HostAge:
    """How long ago (stream time) one host was last heard from; ``None``: never."""

    name: str  # "server", or the client's uuid
    last_event_ms: int | None
    age_s: float | None


@dataclass(frozen=True, slots=True)
class JobLiveness:
    """One IN_PROGRESS job as the watchdog sees it."""

    job_id: str
    server: HostAge
    clients: tuple[HostAge, ...]
    silence_s: float  # of the server, counted as the watchdog counts it
    near_limit: bool
    over_limit: bool


def _age(last_ms: int | None, horizon_ms: int) -> float | None:
    return None if last_ms is None else max(0.0, (horizon_ms - last_ms) / 1000)


def job_liveness(
    document: Mapping[str, Any], horizon_ms: int, limit_s: float, since_ms: int
) -> JobLiveness:
    """``since_ms``: when the server's silence started (its last event, or when the job
    was first seen without one, or when Redis became reachable, whichever is latest)."""
    last = _number(document.get(SERVER_LAST_EVENT))
    members = document.get("clients_info")
    clients = tuple(
        HostAge(
            _text(member.get("uuid")),
            _number(member.get(CLIENT_LAST_EVENT)),
            _age(_number(member.get(CLIENT_LAST_EVENT)), horizon_ms),
        )
        for member in (members if isinstance(members, list) else [])
        if isinstance(member, Mapping)
    )
    silence_s = max(0.0, (horizon_ms - since_ms) / 1000)
    return JobLiveness(
        job_id=_text(document["_id"]),
        server=HostAge("server", last, _age(last, horizon_ms)),
        clients=clients,
        silence_s=round(silence_s, 3),
        near_limit=limit_s > 0 and silence_s >= NEAR_LIMIT * limit_s,
        over_limit=limit_s > 0 and silence_s > limit_s,
    )


@dataclass
class ScanReport:
    """What one scan saw and did."""

    horizon_ms: int
    jobs: list[JobLiveness] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # job ids a finish was published for

    @property
    def silent(self) -> int:
        """IN_PROGRESS jobs whose server is silent for at least half the limit."""
        return sum(1 for job in self.jobs if job.near_limit)


class Watchdog:
    """Finishes IN_PROGRESS jobs whose server stayed silent longer than the limit.

    ``collection`` is the ``job`` collection. :meth:`scan` is called by the worker every
    ``watchdog_interval_s`` (:meth:`worker.consumer.Worker.run_watchdog`).
    """

    def __init__(self, redis_client: redis.Redis, collection: Any, settings: Settings) -> None:
        self.redis = redis_client
        self.collection = collection
        self.settings = settings
        self.publisher = EventPublisher(redis_client, stream=settings.stream, maxlen=None)
        self.lock_key = lock_key(settings.stream)
        self.reachable_since_ms: int | None = None
        self.first_seen: dict[str, int] = {}
        self.finishes_published = 0

    @property
    def enabled(self) -> bool:
        return self.settings.stale_after_s > 0

    def redis_outage(self) -> None:
        """Redis did not answer: silence counts again from when it is back."""
        self.reachable_since_ms = None

    def scan(self) -> ScanReport | None:
        """One scan, if enabled and this worker holds the lock; never raises."""
        if not self.enabled:
            return None
        try:
            return self._scan()
        except PyMongoError as error:
            log.warning("watchdog: MongoDB unavailable, scan skipped", error=str(error))
        except Exception as error:  # noqa: BLE001 (the watchdog must not stop consuming)
            failure = classify(error)
            if failure is RedisFailure.OUTAGE:
                self.redis_outage()
                log.warning("watchdog: Redis unavailable, scan skipped", error=describe(error))
            elif failure is not None:
                log.error("watchdog: Redis refused, scan skipped", error=describe(error))
            else:
                log.error("watchdog: scan failed", error=f"{type(error).__name__}: {error}")
        return None

    def _scan(self) -> ScanReport | None:
        now_ms = redis_now_ms(self.redis)
        if self.reachable_since_ms is None:
            self.reachable_since_ms = now_ms
        horizon = consumed_horizon(self.redis, self.settings.stream, self.settings.group, now_ms)
        if horizon is None:
            return None  # no stream or group yet: nothing was consumed
        interval_ms = max(1, int(self.settings.watchdog_interval_s * 1000))
        if not self.redis.set(self.lock_key, self.settings.consumer, nx=True, px=interval_ms):
            return None  # another worker scans this interval
        report = self.look(horizon)
        for job in report.jobs:
            if job.over_limit:
                self._finish(job, report)
        return report

    def look(self, horizon_ms: int) -> ScanReport:
        """Every IN_PROGRESS job's liveness at ``horizon_ms`` (no lock, no writes but the
        in-memory first sightings)."""
        limit_s = self.settings.stale_after_s
        trusted_from = self.reachable_since_ms if self.reachable_since_ms is not None else 0
        report = ScanReport(horizon_ms)
        seen: set[str] = set()
        for document in self.collection.find(
            {"status": JobStatus.IN_PROGRESS.value}, LIVENESS_PROJECTION
        ):
            job_id = _text(document["_id"])
            seen.add(job_id)
            last = _number(document.get(SERVER_LAST_EVENT))
            if last is None:
                if len(self.first_seen) >= FIRST_SEEN_LIMIT:
                    self.first_seen.clear()  # bounded: at worst a job waits longer
                last = self.first_seen.setdefault(job_id, horizon_ms)
            since = max(last, trusted_from)
            report.jobs.append(job_liveness(document, horizon_ms, limit_s, since))
        for job_id in set(self.first_seen) - seen:
            del self.first_seen[job_id]
        return report

    def message(self, job: JobLiveness) -> str:
        limit = f"{self.settings.stale_after_s:g}"
        if job.server.last_event_ms is None:
            first = self.first_seen.get(job.job_id, 0)
            return (
                f"no event from the FL server since florist-worker began watching the job at "
                f"{iso(first)}; finished by florist-worker after {limit} s of silence"
            )
        return (
            f"no event from the FL server since {iso(job.server.last_event_ms)}; finished by "
            f"florist-worker after {limit} s of silence"
        )

    def _finish(self, job: JobLiveness, report: ScanReport) -> None:
        fields = status_fields(
            JobStatus.FINISHED_WITH_ERROR.value, job_id=job.job_id, error_message=self.message(job)
        )
        fields[MARKER_FIELD] = self.settings.consumer
        entry_id = self.publisher.publish_fields(fields)
        self.finishes_published += 1
        report.finished.append(job.job_id)
        log.warning(
            "watchdog: finishing a job whose FL server is silent",
            job_id=job.job_id,
            silence_s=job.silence_s,
            entry_id=entry_id,
        )
