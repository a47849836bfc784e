"""A snapshot of the stream, its consumer group and the dead letters, for operators.

Read-only and built from cheap introspection commands (XINFO, XPENDING, XLEN), so
it is safe to run against a live system: ``florist-worker stats`` prints it and the
Prometheus exporter turns it into gauges. A missing stream or group is a normal
state (nothing published yet, no worker started) and is reported as such, with
zeros and ``None``, never as an error.

The group's ``lag`` is counted, not Redis's XINFO figure (which stays too high after a
failover), and ``health`` adds what a producer credential may have done: entries gone
unread (trimmed before the group read them) and an entry ID ahead of Redis's clock; both
are :mod:`worker.stream_health`'s, as for the Prometheus exporter and the worker's summary.

Counting dead letters *by reason* reads the whole dead-letter stream with XRANGE in
pages. That is fine for operational sizes (thousands of entries: the stream is meant
to be requeued or trimmed, not to grow forever); pass ``count_reasons=False`` to get
only its length, in constant time.

:func:`collect_jobs` adds the IN_PROGRESS jobs from MongoDB: the age of the last event
from each job's server and clients, in stream time at the group's consumed horizon (the
watchdog's measure, :mod:`worker.watchdog`), and which are near the silence limit or over
it. It waits at most :data:`MONGODB_TIMEOUT_S` for MongoDB and reports a MongoDB that does
not answer as such (:attr:`JobsStats.available` false) instead of raising.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import pymongo
import redis
from pymongo.errors import PyMongoError

from worker import mongo_failures, redis_failures
from worker.document import SERVER_LAST_EVENT
from worker.entities import JOB_COLLECTION, JobStatus
from worker.health import read_heartbeat
from worker.redis_failures import is_group_missing, is_outage
from worker.settings import Settings, redact_url
from worker.stream_health import StreamHealth, check_stream_info, xinfo_field
from worker.watchdog import (
    LIVENESS_PROJECTION,
    NEAR_LIMIT,
    HostAge,
    JobLiveness,
    consumed_horizon,
    job_liveness,
    redis_now_ms,
)

DEAD_LETTER_PAGE = 1_000
UNKNOWN_REASON = "unknown"
MONGODB_TIMEOUT_S: Final = 2.0  # the whole MongoDB read of ``stats``, server selection included
JOBS_SHOWN: Final = 50  # IN_PROGRESS jobs in the text block (JSON lists them all)

# A host's state: how long it has been silent against FLORIST_STALE_AFTER_S.
OK: Final = "ok"
NEAR: Final = "near"  # silent for at least NEAR_LIMIT of the limit
OVER: Final = "over"  # silent for longer than the limit
NEVER: Final = "never"  # no event from it recorded on the document
_STATE_ORDER: Final = {OVER: 0, NEAR: 1, NEVER: 2, OK: 3}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def id_time(entry_id: str) -> datetime:
    """When an entry was added: the milliseconds part of its ID."""
    milliseconds = int(entry_id.split("-", 1)[0])
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


@dataclass(frozen=True, slots=True)
class EntryMark:
    """One end of the stream: an entry ID and the time encoded in it."""

    id: str
    time: datetime

    @classmethod
    def from_id(cls, entry_id: bytes | str) -> EntryMark:
        text = _text(entry_id)
        return cls(text, id_time(text))


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One member of the group, as XINFO CONSUMERS sees it."""

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None = None  # Redis 7.2+: time since its last successful read


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Everything ``stats`` reports; ``None`` means "not known" (e.g. no group yet)."""

    stream: str
    group: str
    dead_stream: str
    collected_at: datetime
    stream_exists: bool = False
    group_exists: bool = False
    length: int = 0
    entries_added: int | None = None
    first_entry: EntryMark | None = None
    last_entry: EntryMark | None = None
    lag: int | None = None  # counted: Redis's own may be wrong (see ``health``)
    entries_read: int | None = None
    last_delivered_id: str | None = None
    pending: int = 0
    oldest_pending_id: str | None = None
    oldest_pending_consumer: str | None = None
    oldest_pending_idle_ms: int | None = None
    oldest_pending_deliveries: int | None = None
    # For an entry waiting for its job or client to be stored: time left before it may be
    # dead-lettered (FLORIST_UNKNOWN_RETRY_S counted from when it was written).
    oldest_pending_retry_left_s: float | None = None
    consumers: tuple[ConsumerStats, ...] = ()
    dead_letters: int = 0
    dead_letters_by_reason: dict[str, int] | None = field(default=None)
    # From the heartbeat of a worker running on this host (FLORIST_HEARTBEAT_FILE), if any.
    worker_round_trips_per_1000_events: float | None = None
    # The IN_PROGRESS jobs (:func:`collect_jobs`), when MongoDB was asked; None otherwise.
    jobs: JobsStats | None = None
    # The true lag, Redis's, entries gone unread, an entry ID ahead of Redis's clock
    # (:mod:`worker.stream_health`); None when the stream does not exist.
    health: StreamHealth | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: datetimes become ISO 8601 text."""
        return _jsonable(asdict(self))  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


@dataclass(frozen=True, slots=True)
class HostSilence:
    """One host of a job: when it was last heard from (stream time) and how long ago."""

    name: str  # "server", or the client's uuid
    last_event_ms: int | None
    last_event: datetime | None
    age_s: float | None  # at the horizon; None: never heard from
    state: str  # OK, NEAR, OVER or NEVER


@dataclass(frozen=True, slots=True)
class JobSilence:
    """One IN_PROGRESS job: its server's silence decides its ``state``."""

    job_id: str
    state: str  # the server's
    server: HostSilence
    clients: tuple[HostSilence, ...]


@dataclass(frozen=True, slots=True)
class JobsStats:
    """The IN_PROGRESS jobs of the database, or why they could not be read.

    Ages are in stream time at ``horizon``: how far the consumer group has applied the
    stream (Redis's clock when it is caught up or has no group yet), so an event still
    in the backlog never makes a host look silent.
    """

    database: str  # the URI with its password hidden, and the database name
    available: bool
    error: str | None = None  # why the jobs could not be read (one line)
    stale_after_s: float = 0.0
    near_after_s: float = 0.0
    horizon: datetime | None = None
    horizon_ms: int | None = None
    behind_s: float | None = None  # how far the horizon is behind Redis's clock
    group_exists: bool = False  # False: ages against Redis's clock, nothing consumed yet
    in_progress: int = 0
    near_limit: int = 0  # servers silent for at least near_after_s (over_limit included)
    over_limit: int = 0
    without_server_event: int = 0
    jobs: tuple[JobSilence, ...] = ()

    @classmethod
    def unavailable(cls, database: str, error: str) -> JobsStats:
        return cls(database=database, available=False, error=error)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def collect_stats(
    redis_client: redis.Redis, settings: Settings, *, count_reasons: bool = True
) -> StreamStats:
    """Take one snapshot; raises ``redis.RedisError`` only when Redis does not answer."""
    checked = check_stream_info(
        redis_client, settings.stream, settings.group, max_ahead_s=settings.max_entry_ahead_s
    )
    values: dict[str, Any] = _stream_values(checked.stream_info)
    if checked.stream_info is not None:
        values.update(_group_values(checked.group_info))
        values["health"], values["lag"] = checked.health, checked.health.lag
    if values.get("group_exists"):
        values.update(_pending_info(redis_client, settings.stream, settings.group))
        oldest = values.get("oldest_pending_id")
        if oldest is not None:
            age_s = datetime.now(UTC).timestamp() - id_time(oldest).timestamp()
            values["oldest_pending_retry_left_s"] = round(
                max(0.0, settings.unknown_retry_s - age_s), 1
            )
        values["consumers"] = _consumers(redis_client, settings.stream, settings.group)
    if count_reasons:
        reasons = count_dead_reasons(redis_client, settings.dead_stream)
        values["dead_letters_by_reason"] = reasons
        values["dead_letters"] = sum(reasons.values())
    else:
        values["dead_letters"] = int(redis_client.xlen(settings.dead_stream))
    beat = read_heartbeat(settings.heartbeat_file)
    if beat is not None and time.time() - beat.at <= settings.heartbeat_ttl_s:
        rate = beat.round_trips_per_1000_events
        values["worker_round_trips_per_1000_events"] = None if rate is None else round(rate, 2)
    return StreamStats(
        stream=settings.stream,
        group=settings.group,
        dead_stream=settings.dead_stream,
        collected_at=datetime.now(UTC),
        **values,
    )


def database_label(settings: Settings) -> str:
    """``<uri> (database <name>)``, the password hidden."""
    return f"{redact_url(settings.mongodb_uri)} (database {settings.mongodb_db})"


def _host_state(age_s: float | None, limit_s: float) -> str:
    if age_s is None:
        return NEVER
    if limit_s > 0 and age_s > limit_s:
        return OVER
    if limit_s > 0 and age_s >= NEAR_LIMIT * limit_s:
        return NEAR
    return OK


def _host(age: HostAge, limit_s: float) -> HostSilence:
    last = age.last_event_ms
    return HostSilence(
        name=age.name,
        last_event_ms=last,
        last_event=None if last is None else datetime.fromtimestamp(last / 1000, UTC),
        age_s=None if age.age_s is None else round(age.age_s, 1),
        state=_host_state(age.age_s, limit_s),
    )


def job_silence(liveness: JobLiveness, limit_s: float) -> JobSilence:
    """A job as ``stats`` shows it, from the watchdog's view of its document."""
    server = _host(liveness.server, limit_s)
    if liveness.server.last_event_ms is not None:  # the watchdog's own judgement
        state = OVER if liveness.over_limit else NEAR if liveness.near_limit else OK
        server = HostSilence(
            server.name, server.last_event_ms, server.last_event, server.age_s, state
        )
    return JobSilence(
        job_id=liveness.job_id,
        state=server.state,
        server=server,
        clients=tuple(_host(client, limit_s) for client in liveness.clients),
    )


def collect_jobs(
    redis_client: redis.Redis,
    database: Any,
    settings: Settings,
    *,
    timeout_s: float = MONGODB_TIMEOUT_S,
) -> JobsStats:
    """The IN_PROGRESS jobs of ``database`` and the silence of their hosts.

    Ages are measured as the watchdog measures them: from the host's last event
    (``server_last_event_ms``, ``clients_info[].last_event_ms``) to the group's consumed
    horizon (:func:`worker.watchdog.consumed_horizon`). MongoDB gets ``timeout_s`` in all
    (server selection included); a MongoDB error, or Redis refusing TIME (an ACL user
    without it), gives :meth:`JobsStats.unavailable`. Raises ``redis.RedisError`` when
    Redis does not answer (the horizon needs it).
    """
    label = database_label(settings)
    try:
        now_ms = redis_now_ms(redis_client)
        horizon = consumed_horizon(redis_client, settings.stream, settings.group, now_ms)
    except redis.ResponseError as error:  # e.g. NOPERM: an ACL user without TIME
        if is_outage(error):  # e.g. MASTERDOWN: Redis does not answer
            raise
        return JobsStats.unavailable(
            label,
            f"Redis refused a command the ages need ({redis_failures.describe(error)}); the "
            "worker's ACL user has TIME (deploy/redis-acl.conf)",
        )
    try:
        with pymongo.timeout(timeout_s):
            documents = list(
                database[JOB_COLLECTION].find(
                    {"status": JobStatus.IN_PROGRESS.value}, LIVENESS_PROJECTION
                )
            )
    except PyMongoError as error:
        return JobsStats.unavailable(
            label,
            f"MongoDB at {label} did not answer within {timeout_s:g} s "
            f"({mongo_failures.describe(error)})",
        )
    return _jobs_stats(label, documents, settings.stale_after_s, now_ms, horizon)


def _jobs_stats(
    label: str,
    documents: list[dict[str, Any]],
    limit_s: float,
    now_ms: int,
    horizon: int | None,
) -> JobsStats:
    """The IN_PROGRESS ``documents`` as :class:`JobsStats`, most urgent first; ``horizon``
    is the group's consumed horizon (None without a group: then ``now_ms`` serves)."""
    horizon_ms = now_ms if horizon is None else horizon
    jobs = sorted(
        (_silence_of(document, horizon_ms, limit_s) for document in documents),
        key=lambda job: (_STATE_ORDER[job.state], -(job.server.age_s or 0.0), job.job_id),
    )
    return JobsStats(
        database=label,
        available=True,
        stale_after_s=limit_s,
        near_after_s=NEAR_LIMIT * limit_s,
        horizon=datetime.fromtimestamp(horizon_ms / 1000, UTC),
        horizon_ms=horizon_ms,
        behind_s=round(max(0, now_ms - horizon_ms) / 1000, 1),
        group_exists=horizon is not None,
        in_progress=len(jobs),
        near_limit=sum(1 for job in jobs if job.state in (NEAR, OVER)),
        over_limit=sum(1 for job in jobs if job.state == OVER),
        without_server_event=sum(1 for job in jobs if job.state == NEVER),
        jobs=tuple(jobs),
    )


def _silence_of(document: dict[str, Any], horizon_ms: int, limit_s: float) -> JobSilence:
    last = document.get(SERVER_LAST_EVENT)
    # Without a server event the watchdog times the job from when it first saw it (in
    # its own memory): nothing here can say how long that has been.
    since = last if isinstance(last, int | float) and not isinstance(last, bool) else None
    liveness = job_liveness(
        document, horizon_ms, limit_s, horizon_ms if since is None else int(since)
    )
    return job_silence(liveness, limit_s)


def _stream_values(info: Mapping[Any, Any] | None) -> dict[str, Any]:
    """What ``stats`` shows of XINFO STREAM (read once, by :func:`check_stream_info`)."""
    if info is None:
        return {"stream_exists": False}
    first, last = xinfo_field(info, "first-entry"), xinfo_field(info, "last-entry")
    return {
        "stream_exists": True,
        "length": int(xinfo_field(info, "length")),
        "entries_added": _int_or_none(xinfo_field(info, "entries-added")),
        "first_entry": EntryMark.from_id(first[0]) if first else None,
        "last_entry": EntryMark.from_id(last[0]) if last else None,
    }


def _group_values(info: Mapping[Any, Any] | None) -> dict[str, Any]:
    """What ``stats`` shows of the group's XINFO GROUPS entry."""
    if info is None:
        return {"group_exists": False}
    delivered = xinfo_field(info, "last-delivered-id")
    return {
        "group_exists": True,
        "entries_read": _int_or_none(xinfo_field(info, "entries-read")),
        "last_delivered_id": None if delivered is None else _text(delivered),
    }


def _pending_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any]:
    summary: Any = client.xpending(stream, group)
    count = int(summary["pending"])
    if not count:
        return {"pending": 0}
    rows: Any = client.xpending_range(stream, group, min="-", max="+", count=1)
    if not rows:  # acknowledged between the two commands
        return {"pending": count}
    oldest = rows[0]
    return {
        "pending": count,
        "oldest_pending_id": _text(oldest["message_id"]),
        "oldest_pending_consumer": _text(oldest["consumer"]),
        "oldest_pending_idle_ms": int(oldest["time_since_delivered"]),
        "oldest_pending_deliveries": int(oldest["times_delivered"]),
    }


def _consumers(client: redis.Redis, stream: str, group: str) -> tuple[ConsumerStats, ...]:
    try:
        rows: Any = client.xinfo_consumers(stream, group)
    except redis.ResponseError as error:
        if is_group_missing(error):  # the group vanished since XINFO GROUPS
            return ()
        raise
    return tuple(
        ConsumerStats(
            name=_text(row["name"]),
            pending=int(row["pending"]),
            idle_ms=int(row["idle"]),
            inactive_ms=_int_or_none(row.get("inactive")),
        )
        for row in rows
    )


def count_dead_reasons(
    client: redis.Redis, dead_stream: str, page_size: int = DEAD_LETTER_PAGE
) -> dict[str, int]:
    """``{dead_reason: count}`` over the whole dead-letter stream (a missing one is empty)."""
    reasons: Counter[str] = Counter()
    start = "-"
    while True:
        page: Any = client.xrange(dead_stream, min=start, max="+", count=page_size)
        for _entry_id, fields in page:
            reason = fields.get(b"dead_reason", fields.get("dead_reason"))
            reasons[UNKNOWN_REASON if reason is None else _text(reason)] += 1
        if len(page) < page_size:
            return dict(sorted(reasons.items()))
        start = f"({_text(page[-1][0])}"


# -- the human-readable block -------------------------------------------------------


def _duration(milliseconds: float) -> str:
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _mark(mark: EntryMark) -> str:
    return f"{mark.id} ({mark.time.isoformat(timespec='seconds')})"


def render_stats(stats: StreamStats) -> str:
    """A short block for people; every number in it is also in :meth:`StreamStats.to_dict`."""
    lines = _stream_lines(stats) + _group_lines(stats)
    reasons = stats.dead_letters_by_reason
    detail = ""
    if reasons:
        detail = " (" + ", ".join(f"{reason} {count}" for reason, count in reasons.items()) + ")"
    lines.append(f"dead letters {stats.dead_stream}: {stats.dead_letters}{detail}")
    if stats.worker_round_trips_per_1000_events is not None:
        lines.append(
            "worker on this host: "
            f"{stats.worker_round_trips_per_1000_events:g} MongoDB round trips per 1,000 events"
        )
    if stats.jobs is not None:
        lines += render_jobs(stats.jobs)
    return "\n".join(lines)


def _stream_lines(stats: StreamStats) -> list[str]:
    if not stats.stream_exists:
        return [f"stream {stats.stream}: missing (nothing published yet)"]
    lines = [f"stream {stats.stream}: {stats.length} entries"]
    if stats.first_entry and stats.last_entry:
        span_ms = (stats.last_entry.time - stats.first_entry.time).total_seconds() * 1000
        lines.append(f"  first  {_mark(stats.first_entry)}")
        lines.append(f"  last   {_mark(stats.last_entry)}")
        lines.append(f"  replay window {_duration(span_ms)}")
    if stats.health is not None and stats.health.too_far_ahead:
        lines.append(_ahead_text(stats.health))
    return lines


def _group_lines(stats: StreamStats) -> list[str]:
    if not stats.group_exists:
        return [f"group {stats.group}: missing (no worker has started)"]
    read = "unknown" if stats.entries_read is None else str(stats.entries_read)
    lines = [f"group {stats.group}: lag {_lag_text(stats.health)}, entries read {read}"]
    if stats.health is not None and stats.health.gone_unread:
        lines.append(
            f"  gone unread {stats.health.gone_unread}: added after the group's reads and "
            "no longer in the stream (trimmed or deleted before delivery), or Redis's "
            "read counter left stale by a failover (docs/stream-integrity.md)"
        )
    lines.append(f"  pending {stats.pending}{_oldest_pending_text(stats)}")
    for consumer in stats.consumers:
        lines.append(
            f"  consumer {consumer.name}: pending {consumer.pending}, "
            f"idle {_duration(consumer.idle_ms)}"
        )
    return lines


def _oldest_pending_text(stats: StreamStats) -> str:
    if stats.oldest_pending_id is None or stats.oldest_pending_idle_ms is None:
        return ""
    oldest = (
        f", oldest {stats.oldest_pending_id} idle "
        f"{_duration(stats.oldest_pending_idle_ms)} "
        f"({stats.oldest_pending_consumer}, {stats.oldest_pending_deliveries} deliveries"
    )
    if stats.oldest_pending_retry_left_s is not None:
        left = _duration(int(stats.oldest_pending_retry_left_s * 1000))
        oldest += f"; if its job stays unknown, dead-lettered in {left}"
    return oldest + ")"


def _lag_text(health: StreamHealth | None) -> str:
    if health is None or health.lag is None:
        return "unknown"
    if not health.lag_exact:
        return f"about {health.lag} (Redis's count: too many undelivered entries to count)"
    if health.redis_lag is not None and health.redis_lag != health.lag:
        return f"{health.lag} (counted; Redis's XINFO says {health.redis_lag})"
    return str(health.lag)


def _ahead_text(health: StreamHealth) -> str:
    return (
        f"  last ID {health.last_generated_id} is {_seconds(health.ahead_s)} ahead of "
        f"Redis's clock (over {_seconds(health.ahead_limit_s)}, FLORIST_MAX_ENTRY_AHEAD_S): "
        "an explicit XADD ID; every later entry follows it, and the watchdog cannot see "
        "those jobs go silent (docs/stream-integrity.md)"
    )


def _seconds(seconds: float) -> str:
    return _duration(seconds * 1000)


def _flag(state: str) -> str:
    return {OVER: " OVER the limit", NEAR: " near the limit"}.get(state, "")


def _host_text(host: HostSilence) -> str:
    if host.age_s is None:
        return "never heard from"
    return f"{_seconds(host.age_s)} ago{_flag(host.state)}"


def render_jobs(jobs: JobsStats, shown: int = JOBS_SHOWN) -> list[str]:
    """The IN_PROGRESS jobs: one line per job, the most silent servers first."""
    if not jobs.available:
        return [f"IN_PROGRESS jobs not shown: {jobs.error}"]
    header = f"IN_PROGRESS jobs in {jobs.database}: {jobs.in_progress}"
    if jobs.stale_after_s > 0:
        header += f", {jobs.near_limit} near the silence limit, {jobs.over_limit} over it"
    lines = [header]
    if jobs.stale_after_s > 0:
        lines.append(
            f"  silence limit {jobs.stale_after_s:g} s (FLORIST_STALE_AFTER_S), "
            f"near from {jobs.near_after_s:g} s"
        )
    else:
        lines.append("  watchdog off (FLORIST_STALE_AFTER_S=0): ages only")
    if jobs.horizon is not None:
        at = jobs.horizon.strftime("%Y-%m-%dT%H:%M:%SZ")
        if jobs.group_exists:
            behind = (
                "" if not jobs.behind_s else f", {_seconds(jobs.behind_s)} behind Redis's clock"
            )
            lines.append(f"  ages at {at}, as far as the group has consumed{behind}")
        else:
            lines.append(f"  ages at {at}, Redis's clock (no consumer group yet)")
    for job in jobs.jobs[:shown]:
        if job.server.age_s is None:
            server = "no event yet (the watchdog times it from when it first sees the job)"
        else:
            server = _host_text(job.server)
        parts = [f"  job {job.job_id}: server {server}"]
        parts += [f"client {client.name} {_host_text(client)}" for client in job.clients]
        lines.append(" | ".join(parts))
    if len(jobs.jobs) > shown:
        lines.append(f"  ... and {len(jobs.jobs) - shown} more (--json lists them all)")
    return lines
