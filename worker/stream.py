"""The events stream seen through a consumer group: every Redis command the worker runs.

Reading (new entries, this consumer's own pending ones, entries claimed from dead
consumers) and settling a batch (dead letters and one XACK, in one MULTI/EXEC) live
here, so that the consume loop in :mod:`worker.consumer` reads as plain policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from florist_events.urls import is_sentinel_url

from worker.cluster import NotACluster, check_names, is_cluster
from worker.errors import Misconfigured
from worker.letters import dead_letter_fields
from worker.redis_failures import is_outage
from worker.requeues import records_key
from worker.settings import Settings
from worker.stream_health import LossWatch, StreamHealth, check_stream, report

log = structlog.get_logger(__name__)

RawFields = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    """One delivered entry; ``fields`` is ``None`` when it was trimmed while pending."""

    id: str
    fields: RawFields | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry on its way to the dead-letter stream, with why and how often it was
    tried, and the position it keeps (its own ID, or a vouched-for ``origin_id``)."""

    entry: Entry
    reason: str
    error: str
    deliveries: int
    origin_id: str = ""


class DeadStreamMisconfigured(Misconfigured):
    """The dead-letter stream's key (or the requeue records' key) is taken by another
    type: a configuration error."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_new = object.__new__
# The slots' own setters: a frozen dataclass refuses plain assignment.
_set_id = Entry.__dict__["id"].__set__
_set_fields = Entry.__dict__["fields"].__set__


def _entries(raw: Iterable[tuple[Any, Any]]) -> list[Entry]:
    """The entries of a reply (one per delivered entry: the hot path builds each
    ``Entry`` through its slots, in half the time of the frozen dataclass's
    ``__init__``). redis-py hands each entry's fields over as a dict of its own already,
    kept as it is; a deleted or trimmed entry comes back with no fields (an empty map or
    nil)."""
    entries = []
    for entry_id, fields in raw:
        entry: Entry = _new(Entry)
        _set_id(entry, entry_id.decode() if type(entry_id) is bytes else _text(entry_id))
        _set_fields(entry, (fields if type(fields) is dict else dict(fields)) if fields else None)
        entries.append(entry)
    return entries


def dead_letter_entry(letter: DeadLetter, stream: str) -> dict[bytes, bytes]:
    """The dead-letter stream entry for ``letter`` (layout: :mod:`worker.letters`)."""
    return dead_letter_fields(
        letter.entry.fields or {},
        reason=letter.reason,
        error=letter.error,
        origin_id=letter.origin_id or letter.entry.id,
        origin_stream=stream,
        deliveries=letter.deliveries,
    )


class GroupStream:
    """The events stream, its consumer group, and the dead-letter stream."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.stream = settings.stream
        self.group = settings.group
        self.consumer = settings.consumer
        self.dead_stream = settings.dead_stream
        self.max_entry_ahead_s = settings.max_entry_ahead_s
        self.losses = LossWatch()  # entries trimmed before the group read them
        self._own_cursor = "0"
        self._claim_cursor = "0-0"
        # Redis Cluster: every key of a transaction in one slot (refused here, at start),
        # and after an outage (a failover) this consumer's pending entries are read again:
        # acknowledgements the promoted replica never received leave them pending here.
        # The same after an outage behind Redis Sentinel.
        self.cluster = is_cluster(client, settings.redis_cluster)
        if self.cluster:
            check_names(self.stream, self.dead_stream)
        self._failover_kind = "Redis Cluster" if self.cluster else None
        if is_sentinel_url(settings.redis_url):
            self._failover_kind = "Redis Sentinel"
        self._reread_own = False
        self._reread_cursor = "0"

    @contextmanager
    def _watch_outage(self) -> Iterator[None]:
        """Behind a Cluster or Sentinel, remember that Redis failed, so pending entries are
        re-read (a failover may have lost acknowledgements)."""
        try:
            yield
        except Exception as error:
            if self._failover_kind is not None and not self._reread_own and is_outage(error):
                self._reread_own, self._reread_cursor = True, "0"
                log.warning(
                    f"re-reading this consumer's pending entries after a {self._failover_kind} "
                    "outage",
                    stream=self.stream,
                    consumer=self.consumer,
                )
            raise

    def check_dead_stream(self) -> None:
        """Refuse to start when the dead-letter key holds something else than a stream:
        MULTI/EXEC does not roll back, so a failing XADD would still let XACK through."""
        kind: Any = self.client.type(self.dead_stream)
        kind = _text(kind)
        if kind not in ("none", "stream"):
            raise DeadStreamMisconfigured(
                f"the dead-letter key {self.dead_stream!r} holds a {kind}, not a stream: "
                "set FLORIST_DEAD_STREAM to a free key"
            )
        records: Any = self.client.type(records_key(self.stream))
        records = _text(records)
        if records not in ("none", "hash"):
            raise DeadStreamMisconfigured(
                f"the requeue records' key {records_key(self.stream)!r} holds a {records}, "
                "not a hash: delete it or set FLORIST_STREAM to another name"
            )

    def ensure_group(self) -> bool:
        """Create the group at ID 0 (missing nothing written before); True if created."""
        try:
            self.check_dead_stream()
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except (redis.exceptions.MovedError, redis.exceptions.AskError) as error:
            if self.cluster:
                raise
            raise NotACluster(
                f"Redis answered {type(error).__name__} ({error}): it is a Redis Cluster; "
                "set FLORIST_REDIS_CLUSTER=true (and give FLORIST_STREAM a hash tag, e.g. "
                "{florist}:events)"
            ) from None
        except redis.ResponseError as error:
            if "BUSYGROUP" in str(error):
                return False
            raise
        return True

    def _read(self, last_id: str, count: int, block_ms: int | None) -> list[Entry]:
        with self._watch_outage():
            response: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: last_id}, count=count, block=block_ms
            )
        if not response:
            return []
        (_stream, raw), *_ = response
        return _entries(raw)

    def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        """Entries never delivered to anyone (ID ``>``), waiting up to ``block_ms``.

        In cluster mode, after an outage, this consumer's pending entries come first.
        """
        if self._reread_own:
            entries = self._reread_own_pending(count)
            if entries:
                return entries
        return self._read(">", count, block_ms)

    def _reread_own_pending(self, count: int) -> list[Entry]:
        """A page of this consumer's pending entries after a cluster outage (a failover may
        have lost acknowledgements); empty, and done, once all were seen."""
        entries = self._read(self._reread_cursor, count, None)
        if entries:
            self._reread_cursor = entries[-1].id
            return entries
        self._reread_own, self._reread_cursor = False, "0"
        return []

    def read_own_pending(self, count: int) -> list[Entry]:
        """This consumer's pending entries, a page at a time; empty once all are seen.

        Used at start, so a worker restarted under the same name finishes what it had.
        """
        entries = self._read(self._own_cursor, count, None)
        if entries:
            self._own_cursor = entries[-1].id
        return entries

    def claim_abandoned(self, min_idle_ms: int, count: int) -> tuple[list[Entry], list[str]]:
        """XAUTOCLAIM entries idle longer than ``min_idle_ms`` (their consumer died),
        following the cursor across calls; also returns IDs trimmed while pending."""
        with self._watch_outage():
            reply: Any = self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            )
        next_cursor, raw, *rest = reply
        self._claim_cursor = _text(next_cursor)
        deleted = [_text(entry_id) for entry_id in rest[0]] if rest else []
        return _entries(raw), deleted

    @property
    def claim_scan_complete(self) -> bool:
        """True when the last XAUTOCLAIM reached the end of the pending list."""
        return self._claim_cursor == "0-0"

    def claim_own_retries(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take back this consumer's own entries left pending for a retry, once they
        have waited ``min_idle_ms`` (XCLAIM counts the new delivery)."""
        with self._watch_outage():
            pending: Any = self.client.xpending_range(
                self.stream,
                self.group,
                min="-",
                max="+",
                count=count,
                consumername=self.consumer,
                idle=min_idle_ms,
            )
            if not pending:
                return []
            ids = [_text(row["message_id"]) for row in pending]
            claim_ids: list[Any] = list(ids)
            reply: Any = self.client.xclaim(
                self.stream, self.group, self.consumer, min_idle_ms, claim_ids
            )
        # An ID missing from the reply was trimmed (Redis drops it from the pending list
        # itself) or was just claimed by another consumer: either way it is not ours.
        return _entries(reply)

    def deliveries(self, entry_id: str) -> int:
        """How many times the group has delivered this entry (1 if it is not pending)."""
        with self._watch_outage():
            rows: Any = self.client.xpending_range(
                self.stream, self.group, min=entry_id, max=entry_id, count=1
            )
        return int(rows[0]["times_delivered"]) if rows else 1

    def settle(self, acknowledged: Sequence[str], dead: Sequence[DeadLetter]) -> None:
        """Dead-letter and acknowledge in one MULTI/EXEC: an entry is never both lost
        from the group and missing from the dead-letter stream."""
        if not acknowledged and not dead:
            return
        pipe = self.client.pipeline(transaction=True)
        for letter in dead:
            pipe.xadd(self.dead_stream, dead_letter_entry(letter, self.stream))  # type: ignore[arg-type]
        ids = list(dict.fromkeys([*acknowledged, *(letter.entry.id for letter in dead)]))
        pipe.xack(self.stream, self.group, *ids)
        with self._watch_outage():
            pipe.execute()

    def pending_count(self) -> int:
        summary: Any = self.client.xpending(self.stream, self.group)
        return int(summary["pending"])

    def health(self) -> StreamHealth:
        """Read the stream's integrity (its ``lag`` is the true backlog: counted, as Redis's
        own XINFO lag stays wrong after a failover), and log a warning for entries lost
        since the last reading and for an entry ID too far ahead of Redis's clock."""
        health = check_stream(
            self.client, self.stream, self.group, max_ahead_s=self.max_entry_ahead_s
        )
        report(health, self.losses.observe(health), self.stream)
        return health
