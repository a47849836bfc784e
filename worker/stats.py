"""A snapshot of the stream, its consumer group and the dead letters, for operators.

Read-only and built from cheap introspection commands (XINFO, XPENDING, XLEN), so
it is safe to run against a live system: ``florist-worker stats`` prints it and the
Prometheus exporter turns it into gauges. A missing stream or group is a normal
state (nothing published yet, no worker started) and is reported as such, with
zeros and ``None``, never as an error.

Counting dead letters *by reason* reads the whole dead-letter stream with XRANGE in
pages. That is fine for operational sizes (thousands of entries: the stream is meant
to be requeued or trimmed, not to grow forever); pass ``count_reasons=False`` to get
only its length, in constant time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worker.health import read_heartbeat
from worker.settings import Settings

DEAD_LETTER_PAGE = 1_000
UNKNOWN_REASON = "unknown"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _is_missing_key(error: redis.ResponseError) -> bool:
    message = str(error)
    return "no such key" in message or message.startswith("NOGROUP")


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
    lag: int | None = None
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: datetimes become ISO 8601 text."""
        return _jsonable(asdict(self))  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


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
    values: dict[str, Any] = {}
    values.update(_stream_info(redis_client, settings.stream))
    if values.get("stream_exists"):
        values.update(_group_info(redis_client, settings.stream, settings.group))
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


def _stream_info(client: redis.Redis, stream: str) -> dict[str, Any]:
    try:
        info: Any = client.xinfo_stream(stream)
    except redis.ResponseError as error:
        if _is_missing_key(error):
            return {"stream_exists": False}
        raise
    first, last = info.get("first-entry"), info.get("last-entry")
    return {
        "stream_exists": True,
        "length": int(info["length"]),
        "entries_added": _int_or_none(info.get("entries-added")),
        "first_entry": EntryMark.from_id(first[0]) if first else None,
        "last_entry": EntryMark.from_id(last[0]) if last else None,
    }


def _group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any]:
    groups: Any = client.xinfo_groups(stream)
    for info in groups:
        if _text(info["name"]) == group:
            delivered = info.get("last-delivered-id")
            return {
                "group_exists": True,
                # Redis 7: lag is nil when it cannot be computed (after XDEL or a trim
                # past undelivered entries); absent before Redis 7.
                "lag": _int_or_none(info.get("lag")),
                "entries_read": _int_or_none(info.get("entries-read")),
                "last_delivered_id": None if delivered is None else _text(delivered),
            }
    return {"group_exists": False}


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
        if _is_missing_key(error):  # the group vanished since XINFO GROUPS
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
    lines: list[str] = []
    if not stats.stream_exists:
        lines.append(f"stream {stats.stream}: missing (nothing published yet)")
    else:
        lines.append(f"stream {stats.stream}: {stats.length} entries")
        if stats.first_entry and stats.last_entry:
            span_ms = (stats.last_entry.time - stats.first_entry.time).total_seconds() * 1000
            lines.append(f"  first  {_mark(stats.first_entry)}")
            lines.append(f"  last   {_mark(stats.last_entry)}")
            lines.append(f"  replay window {_duration(span_ms)}")
    if not stats.group_exists:
        lines.append(f"group {stats.group}: missing (no worker has started)")
    else:
        lag = "unknown" if stats.lag is None else str(stats.lag)
        read = "unknown" if stats.entries_read is None else str(stats.entries_read)
        lines.append(f"group {stats.group}: lag {lag}, entries read {read}")
        oldest = ""
        if stats.oldest_pending_id is not None and stats.oldest_pending_idle_ms is not None:
            oldest = (
                f", oldest {stats.oldest_pending_id} idle "
                f"{_duration(stats.oldest_pending_idle_ms)} "
                f"({stats.oldest_pending_consumer}, {stats.oldest_pending_deliveries} deliveries"
            )
            if stats.oldest_pending_retry_left_s is not None:
                left = _duration(int(stats.oldest_pending_retry_left_s * 1000))
                oldest += f"; if its job stays unknown, dead-lettered in {left}"
            oldest += ")"
        lines.append(f"  pending {stats.pending}{oldest}")
        for consumer in stats.consumers:
            lines.append(
                f"  consumer {consumer.name}: pending {consumer.pending}, "
                f"idle {_duration(consumer.idle_ms)}"
            )
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
    return "\n".join(lines)
