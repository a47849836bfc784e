"""Planning one batch, without I/O: decide what each entry is, then coalesce.

Every entry is checked in full (:func:`plan_entry`), whatever else is in its batch, so
an entry's outcome never depends on where batch boundaries fall (except ``coalesced``
versus ``applied``). Then, because a snapshot event carries a target's whole current
state, only the newest valid snapshot per target needs writing: the older ones are
``coalesced``; so are all but the newest heartbeat of each host. That is what lets a
backlog drain far faster than one write per entry.

Nothing an entry holds can make planning raise: a fault of the entry is its outcome
(``invalid``, ``unsupported_version``), and anything unforeseen is ``internal_error``
with the exception named, so the entry is dead-lettered and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.effects import coalesce_target, may_be_coalesced
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
    """

    entry: Entry
    event: Event | None = None
    position: StreamPosition | None = None
    outcome: Outcome | None = None
    error: str = ""
    origin: str = ""

    @property
    def event_type(self) -> str:
        return self.event.type if self.event is not None else "unknown"

    @property
    def origin_id(self) -> str:
        return self.origin or self.entry.id


def describe(error: BaseException) -> str:
    """An unforeseen exception as one line: its type and message."""
    return f"{type(error).__name__}: {error}"


def plan_entry(entry: Entry, limits: Limits, requeues: Mapping[str, str] = NO_RECORDS) -> Planned:
    """Parse one entry; a bad one gets its final outcome and the reason right away."""
    if entry.fields is None:
        return Planned(entry, outcome=Outcome.LOST, error="trimmed from the stream while pending")
    try:
        return _plan(entry, entry.fields, limits, requeues)
    except Exception as error:  # noqa: BLE001 (last resort: the entry, not the worker, fails)
        return Planned(entry, outcome=Outcome.INTERNAL_ERROR, error=describe(error))


def _plan(
    entry: Entry, fields: Mapping[bytes, bytes], limits: Limits, requeues: Mapping[str, str]
) -> Planned:
    own = StreamPosition.parse(entry.id)
    vouched = vouched_origin(fields, requeues)
    origin = vouched if vouched is not None else entry.id
    try:
        event = parse_entry(fields, limits)
    except InvalidEntry as error:
        return Planned(entry, outcome=Outcome(error.outcome), error=error.message, origin=origin)
    if event.origin_id is None:
        return Planned(entry, event=event, position=own, origin=origin)
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
    """Plan a batch in stream order; superseded snapshots are marked ``coalesced``."""
    planned = [plan_entry(entry, limits, requeues) for entry in entries]
    # Each event's coalescing target, once (None: never coalesced).
    targets = [
        coalesce_target(item.event)
        if item.event is not None and item.position is not None and may_be_coalesced(item.event)
        else None
        for item in planned
    ]
    newest: dict[tuple[str, ...], StreamPosition] = {}
    for item, target in zip(planned, targets, strict=True):
        if item.event is not None and item.position is not None:
            key = target or coalesce_target(item.event)  # a finishing snapshot still counts
            if key is not None and (key not in newest or newest[key] < item.position):
                newest[key] = item.position
    result = []
    for item, target in zip(planned, targets, strict=True):
        if target is not None and item.position is not None and item.position < newest[target]:
            item = Planned(
                item.entry, item.event, item.position, Outcome.COALESCED, origin=item.origin
            )
        result.append(item)
    return result
