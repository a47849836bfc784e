"""Planning one batch, without I/O: decide what each entry is, then coalesce.

Every entry is checked in full (:func:`plan_entry`), whatever else is in its batch, so
an entry's outcome never depends on where batch boundaries fall (except ``coalesced``
versus ``applied``). Then, because a snapshot event carries a target's whole current
state, only the newest valid snapshot per target needs writing: each older one is
marked with the entry it folds into (``coalesced_into``); so is each heartbeat but the
newest of its host. That is what lets a backlog drain far faster than one write per
entry. Whether a folded entry ends ``coalesced`` is decided with the newest's outcome
(:mod:`worker.decision`), never here.

Nothing an entry holds can make planning raise: a fault of the entry is its outcome
(``invalid``, ``unsupported_version``), and anything unforeseen is ``internal_error``
with the exception named, so the entry is dead-lettered and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.effects import coalesce_target, is_finishing
from worker.events import Event, InvalidEntry, Limits, parse_entry
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.requeues import NO_RECORDS, vouched_origin
from worker.stream import Entry


@dataclass(frozen=True, slots=True)
class Planned:
    """One entry of the batch: either an event to apply, or an outcome already decided.

    ``origin`` is where the event stands in the stream for good: its own ID, or the
    ``origin_id`` a requeue record vouches for; a dead letter keeps it.
    ``coalesced_into`` is the entry ID of the newer snapshot of the same target in the
    batch that stands for this one (empty: the event is applied itself).
    """

    entry: Entry
    event: Event | None = None
    position: StreamPosition | None = None
    outcome: Outcome | None = None
    error: str = ""
    origin: str = ""
    coalesced_into: str = ""

    @property
    def event_type(self) -> str:
        return self.event.type if self.event is not None else "unknown"

    @property
    def origin_id(self) -> str:
        return self.origin or self.entry.id


_new = object.__new__
# The slots' own setters: a frozen dataclass refuses plain assignment.
_set_entry, _set_event, _set_position, _set_outcome, _set_error, _set_origin, _set_into = (
    Planned.__dict__[name].__set__
    for name in ("entry", "event", "position", "outcome", "error", "origin", "coalesced_into")
)


def _planned(
    entry: Entry,
    event: Event | None,
    position: StreamPosition | None,
    outcome: Outcome | None,
    origin: str,
) -> Planned:
    """``Planned(entry, event, position, outcome, origin=origin)`` in under half the time
    of the frozen dataclass's ``__init__``: one per entry on the hot path."""
    item: Planned = _new(Planned)
    _set_entry(item, entry)
    _set_event(item, event)
    _set_position(item, position)
    _set_outcome(item, outcome)
    _set_error(item, "")
    _set_origin(item, origin)
    _set_into(item, "")
    return item


def describe(error: BaseException) -> str:
    """An unforeseen exception as one line: its type and message."""
    return f"{type(error).__name__}: {error}"


def plan_entry(entry: Entry, limits: Limits, requeues: Mapping[str, str] = NO_RECORDS) -> Planned:
    """Parse one entry; a bad one gets its final outcome and the reason right away."""
    fields = entry.fields
    if fields is None:
        return Planned(entry, outcome=Outcome.LOST, error="trimmed from the stream while pending")
    try:
        own = StreamPosition.parse(entry.id)
        # No origin_id field, nothing to vouch for (what vouched_origin would find).
        vouched = vouched_origin(fields, requeues) if b"origin_id" in fields else None
        origin = vouched if vouched is not None else entry.id
        try:
            event = parse_entry(fields, limits)
        except InvalidEntry as error:
            return Planned(
                entry, outcome=Outcome(error.outcome), error=error.message, origin=origin
            )
        if event.origin_id is None:
            return _planned(entry, event, own, None, origin)
        return _requeued(entry, event, own, vouched, origin)
    except Exception as error:  # noqa: BLE001 (last resort: the entry, not the worker, fails)
        return Planned(entry, outcome=Outcome.INTERNAL_ERROR, error=describe(error))


def _requeued(
    entry: Entry, event: Event, own: StreamPosition, vouched: str | None, origin: str
) -> Planned:
    """An event with an ``origin_id``: it stands there only if a requeue record vouches
    for it, and only if that is before the entry's own ID."""
    if vouched is None:
        message = (
            f"origin_id {event.origin_id} is not vouched for by a requeue record: only "
            "`florist-worker dlq requeue` may set it"
        )
        return Planned(entry, outcome=Outcome.INVALID, error=message)
    position = StreamPosition.parse(vouched)
    if position >= own:
        # A requeued entry is always written after its first ID; a later origin_id
        # would let an entry freeze a target or win the first finish.
        message = f"origin_id {event.origin_id} is not before the entry's own ID {entry.id}"
        return Planned(entry, outcome=Outcome.INVALID, error=message)
    return Planned(entry, event=event, position=position, origin=origin)


def plan_batch(
    entries: Sequence[Entry], limits: Limits, requeues: Mapping[str, str] = NO_RECORDS
) -> list[Planned]:
    """Plan a batch in stream order; each superseded snapshot names its newest."""
    planned = [plan_entry(entry, limits, requeues) for entry in entries]
    # Each event's coalescing target, computed once per entry (None: never coalesced),
    # and the newest of each target, a finishing snapshot included.
    keys: list[tuple[str, ...] | None] = []
    newest: dict[tuple[str, ...], Planned] = {}
    for item in planned:
        event, position, key = item.event, item.position, None
        if event is not None and position is not None:
            key = coalesce_target(event)
            if key is not None:
                latest = newest.get(key)
                if latest is None or (latest.position is not None and latest.position < position):
                    newest[key] = item
        keys.append(key)
    for item, key in zip(planned, keys, strict=True):
        if key is None or item.event is None or item.position is None:
            continue
        latest = newest[key]
        # A finishing snapshot is never coalesced (what effects.may_be_coalesced says).
        later = latest.position is not None and item.position < latest.position
        if later and not is_finishing(item.event):
            # Made above and seen by no one yet: marked in place, not made again.
            _set_into(item, latest.entry.id)
    return planned
