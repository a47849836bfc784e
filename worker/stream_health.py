"""The stream's integrity: the group's true backlog, and what a producer credential did.

One reading, :func:`check_stream`, serves ``stats``, the Prometheus exporter and the
worker's summary line (docs/stream-integrity.md says why each rule is what it is):

* **The true lag**: the entries after the group's ``last-delivered-id``, counted. Redis's
  own ``lag`` (XINFO GROUPS) is ``entries-added`` minus the group's ``entries-read``, and
  Redis before 7.4 does not replicate ``entries-read`` (XREADGROUP reaches a replica as
  XCLAIM, which leaves it alone): after a failover the promoted replica's lag stays too
  high forever. So the worker counts instead, cheaply: 0 when ``last-delivered-id`` is the
  stream's ``last-generated-id``; the stream's length when the group is behind the first
  entry; else one XRANGE after ``last-delivered-id`` of at most :data:`LAG_COUNT_LIMIT`
  entries. Beyond that limit the count is not exact (``lag_exact`` false) and the lag is
  Redis's figure, kept between the count and the stream's length. XINFO and XRANGE run
  in one MULTI/EXEC, so they see the same stream: one transaction when the group is
  caught up, two when it has a backlog to count (the first tells where the group is);
  a reading also asks TIME (the ahead check) and INFO (which server answered): three or
  four round trips in all.
* **Entries gone unread** (``gone_unread``): Redis's lag minus the counted one. Redis
  counts every entry added after the group's reads; the group will never read those that
  were trimmed (``XADD ... MAXLEN 0`` or ``MINID`` with a producer credential, a MAXLEN
  shorter than the backlog) before it got to them. Redis's counter going stale in a
  failover adds to the same figure, so a single reading cannot tell the two apart:
  :class:`LossWatch` can, over time, by counting only its growth on one Redis server.
  Deleting or acknowledging dead letters touches the dead-letter stream, never this
  figure; an XDEL on the events stream makes Redis's lag unknown (``None``), never a loss.
* **An entry ID ahead of Redis's clock** (``ahead_s``): how far ``last-generated-id`` is
  ahead of TIME. Redis makes every later ``XADD *`` ID at least one past it, so one
  explicit far-future ID moves every later entry there and the watchdog sees those jobs'
  events in the future (never silent). More than ``FLORIST_MAX_ENTRY_AHEAD_S`` is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import redis
import structlog

from worker.cluster import is_cluster
from worker.positions import StreamPosition
from worker.redis_failures import RedisFailure, classify, is_group_missing
from worker.watchdog import redis_now_ms

log = structlog.get_logger(__name__)

# Undelivered entries counted one by one, at most: an XRANGE returns them whole, and an
# entry may be up to FLORIST_MAX_ENTRY_BYTES.
LAG_COUNT_LIMIT: Final = 100
_ATTEMPTS: Final = 3  # readings tried when the group moves back in between (a failover)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def xinfo_field(reply: Mapping[Any, Any], name: str) -> Any:
    """A field of an XINFO reply: keyed by text, or by bytes (a Cluster's transaction)."""
    return reply.get(name, reply.get(name.encode()))


@dataclass(frozen=True, slots=True)
class StreamHealth:
    """One reading of the stream and its group; ``None`` means "not known"."""

    stream_exists: bool = False
    group_exists: bool = False
    lag: int | None = None  # entries after last-delivered-id: the backlog
    lag_exact: bool = False  # False: over LAG_COUNT_LIMIT, ``lag`` is an estimate
    redis_lag: int | None = None  # XINFO GROUPS lag, as Redis reports it
    gone_unread: int | None = None  # redis_lag - lag: added after the group's reads, gone
    last_generated_id: str | None = None
    ahead_s: float = 0.0  # how far last_generated_id is ahead of Redis's clock
    ahead_limit_s: float = 0.0  # FLORIST_MAX_ENTRY_AHEAD_S
    server: str | None = None  # which Redis server answered (run id, replication id)

    @property
    def too_far_ahead(self) -> bool:
        return self.ahead_s > self.ahead_limit_s


@dataclass(frozen=True, slots=True)
class _Reading:
    """The raw answers of one MULTI/EXEC. ``complete``: its XRANGE started at or before
    the ``last-delivered-id`` read in the same transaction, so ``after`` holds every entry
    after it (up to the limit)."""

    stream: Mapping[Any, Any]
    group: Mapping[Any, Any] | None
    after: Sequence[Any]
    complete: bool


def check_stream(
    client: redis.Redis, stream: str, group: str, *, max_ahead_s: float
) -> StreamHealth:
    """Read the stream's integrity (module docstring); raises ``redis.RedisError`` only
    when Redis does not answer. A missing stream or group is reported, not raised."""
    return check_stream_info(client, stream, group, max_ahead_s=max_ahead_s).health


class Checked(NamedTuple):
    """A reading, and the XINFO replies it was made of (``None``: no stream, no group),
    for callers that show them too (``stats``) without asking Redis again."""

    health: StreamHealth
    stream_info: Mapping[Any, Any] | None = None
    group_info: Mapping[Any, Any] | None = None


def check_stream_info(
    client: redis.Redis, stream: str, group: str, *, max_ahead_s: float
) -> Checked:
    """:func:`check_stream`, with the XINFO STREAM and GROUPS replies it read."""
    try:
        reading = _read(client, stream, group)
    except redis.ResponseError as error:
        if is_group_missing(error):
            return Checked(StreamHealth(ahead_limit_s=max_ahead_s))
        raise
    return Checked(_health(client, stream, reading, max_ahead_s), reading.stream, reading.group)


def _health(
    client: redis.Redis, stream: str, reading: _Reading, max_ahead_s: float
) -> StreamHealth:
    last_id = _text(xinfo_field(reading.stream, "last-generated-id"))
    ahead_ms = StreamPosition.parse(last_id).milliseconds - redis_now_ms(client)
    backlog = _Backlog() if reading.group is None else _backlog(reading)
    return StreamHealth(
        stream_exists=True,
        group_exists=reading.group is not None,
        lag=backlog.lag,
        lag_exact=backlog.exact,
        redis_lag=backlog.redis_lag,
        gone_unread=backlog.gone_unread,
        last_generated_id=last_id,
        ahead_s=round(max(0, ahead_ms) / 1000, 3),
        ahead_limit_s=max_ahead_s,
        server=server_identity(client, stream),
    )


def _read(client: redis.Redis, stream: str, group: str) -> _Reading:
    """XINFO STREAM and XINFO GROUPS in one MULTI/EXEC; when the group has entries left to
    count, again with an XRANGE after the ``last-delivered-id`` just seen. A group that
    moved back meanwhile (a failover) is read again; after a few tries the count is a
    guess (``complete`` false)."""
    start: StreamPosition | None = None
    reading: _Reading | None = None
    for _attempt in range(_ATTEMPTS):
        pipe = client.pipeline(transaction=True)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        if start is not None:
            pipe.xrange(stream, min=f"({start}", max="+", count=LAG_COUNT_LIMIT + 1)
        info, groups, *after = pipe.execute()
        found = _find(groups, group)
        delivered = _delivered(found)
        counted = start is not None and delivered is not None and delivered >= start
        reading = _Reading(info, found, after[0] if after else [], counted)
        if delivered is None or counted or _known_without_count(info, delivered):
            return reading
        start = delivered
    assert reading is not None
    return reading


def _known_without_count(info: Mapping[Any, Any], delivered: StreamPosition) -> bool:
    """The lag needs no XRANGE: the stream is empty, the group is behind its first entry
    (every entry is left: the length), or at its last generated ID (none is: 0)."""
    first = xinfo_field(info, "first-entry")
    if not int(xinfo_field(info, "length")) or first is None:
        return True
    last = StreamPosition.parse(_text(xinfo_field(info, "last-generated-id")))
    return StreamPosition.parse(first[0]) > delivered or delivered >= last


def _find(groups: Any, group: str) -> Mapping[Any, Any] | None:
    return next((info for info in groups if _text(xinfo_field(info, "name")) == group), None)


def _delivered(group: Mapping[Any, Any] | None) -> StreamPosition | None:
    if group is None:
        return None
    return StreamPosition.parse(_text(xinfo_field(group, "last-delivered-id") or "0-0"))


@dataclass(frozen=True, slots=True)
class _Backlog:
    lag: int | None = None
    exact: bool = False
    redis_lag: int | None = None
    gone_unread: int | None = None


def _backlog(reading: _Reading) -> _Backlog:
    """The true lag, Redis's, and the entries gone unread (module docstring)."""
    info, group = reading.stream, reading.group or {}
    delivered = _delivered(group) or StreamPosition(0, 0)
    length = int(xinfo_field(info, "length"))
    first = xinfo_field(info, "first-entry")
    redis_lag = _int_or_none(xinfo_field(group, "lag"))
    if not length or first is None or StreamPosition.parse(first[0]) > delivered:
        lag, exact = length, True  # every entry left is after the group's position
    elif delivered >= StreamPosition.parse(_text(xinfo_field(info, "last-generated-id"))):
        lag, exact = 0, True  # the group is at the last generated ID
    else:
        counted = sum(1 for entry in reading.after if StreamPosition.parse(entry[0]) > delivered)
        exact = reading.complete and len(reading.after) <= LAG_COUNT_LIMIT
        lag = counted
        if not exact and redis_lag is not None:
            lag = min(max(redis_lag, counted), length)
    gone = None
    if exact and redis_lag is not None and redis_lag >= lag:
        gone = redis_lag - lag
    return _Backlog(lag, exact, redis_lag, gone)


def server_identity(client: redis.Redis, stream: str) -> str | None:
    """The Redis server holding ``stream``: its run id and replication id. A restart or a
    promoted replica answers with others (in a Cluster, the node of the stream's slot).
    ``None`` when Redis refuses INFO (an ACL user without it): losses are then not told
    from failovers, and not counted."""
    try:
        if is_cluster(client):
            cluster: Any = client
            node = cluster.get_node_from_key(stream)
            reply: Any = cluster.info("server", "replication", target_nodes=node)
        else:
            reply = client.info("server", "replication")
    except redis.ResponseError as error:
        if classify(error) is RedisFailure.OUTAGE:
            raise  # MASTERDOWN, BUSY, ...: the caller's to wait out
        return None  # INFO refused or renamed away
    return f"{reply.get('run_id', '?')}/{reply.get('master_replid', '?')}"


class LossWatch:
    """Entries lost since this process first looked: the growth of
    :attr:`StreamHealth.gone_unread` between readings of the same Redis server.

    A reading from another server (a failover, a restart) starts over from its figure:
    Redis before 7.4 leaves the promoted replica's counter stale, which would look like a
    loss. So would the figure's first reading, which may be a stale counter too: it is
    reported (once per server) as what it is, not counted. Not thread-safe: one per caller.
    """

    def __init__(self, *, announce: bool = True) -> None:
        self.announce = announce  # log a server's first figure (once per process suffices)
        self.lost_total = 0
        self._server: str | None = None
        self._gone: int | None = None

    def observe(self, health: StreamHealth) -> int:
        """Entries lost since the last reading (0 on the first one of a server)."""
        gone = health.gone_unread
        if gone is None or health.server is None:
            return 0
        if health.server != self._server or self._gone is None:
            self._server, self._gone = health.server, gone
            if gone and self.announce:
                log.warning(
                    "Redis's lag counts entries the group will never read: trimmed or "
                    "deleted before delivery, or Redis's read counter left stale by a "
                    "failover (Redis before 7.4); the counted lag is used, and only new "
                    "losses are reported from here",
                    gone_unread=gone,
                    redis_lag=health.redis_lag,
                    lag=health.lag,
                )
            return 0
        grown, self._gone = gone - self._gone, gone
        if grown <= 0:
            return 0
        self.lost_total += grown
        return grown


def report(health: StreamHealth, lost: int, stream: str) -> None:
    """The warning lines for what a reading found (``lost``: from :class:`LossWatch`)."""
    if lost:
        log.warning(
            "stream entries lost: trimmed or deleted before the group read them "
            "(XADD MAXLEN/MINID with a producer credential, or a MAXLEN below the backlog)",
            stream=stream,
            lost=lost,
            gone_unread=health.gone_unread,
        )
    if health.too_far_ahead:
        log.warning(
            "stream entry ID ahead of Redis's clock: every later entry gets an ID after it "
            "(an explicit XADD ID); the watchdog cannot see those jobs go silent",
            stream=stream,
            last_generated_id=health.last_generated_id,
            ahead_s=health.ahead_s,
            limit_s=health.ahead_limit_s,
        )
