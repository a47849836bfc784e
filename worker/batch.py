"""Planning one batch, without I/O: parse every entry, then coalesce superseded snapshots.

A snapshot event carries a target's whole current state, so within one batch only
the newest per target needs writing; the older ones are ``coalesced``. This is what
lets a backlog drain far faster than one write per entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.effects import may_be_coalesced, metrics_target
from worker.events import Event, InvalidEntry, Limits, parse_entry
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.stream import Entry


@dataclass(frozen=True, slots=True)
class Planned:
    """One entry of the batch: either an event to apply, or an outcome already decided."""

    entry: Entry
    event: Event | None = None
    position: StreamPosition | None = None
    outcome: Outcome | None = None
    error: str = ""

    @property
    def event_type(self) -> str:
        return self.event.type if self.event is not None else "unknown"


def plan_entry(entry: Entry, limits: Limits) -> Planned:
    """Parse one entry; a bad one gets its final outcome and the reason right away."""
    if entry.fields is None:
        return Planned(entry, outcome=Outcome.LOST, error="trimmed from the stream while pending")
    try:
        event = parse_entry(entry.fields, limits)
        position = event.position(entry.id)
    except InvalidEntry as error:
        return Planned(entry, outcome=Outcome(error.outcome), error=error.message)
    if event.origin_id is not None and position >= StreamPosition.parse(entry.id):
        # A requeued entry is always written after its first ID; a later origin_id
        # would let one producer freeze a target or win the first finish.
        message = f"origin_id {event.origin_id} is not before the entry's own ID {entry.id}"
        return Planned(entry, outcome=Outcome.INVALID, error=message)
    return Planned(entry, event=event, position=position)


def plan_batch(entries: Sequence[Entry], limits: Limits) -> list[Planned]:
    """Plan a batch in stream order; superseded snapshots are marked ``coalesced``."""
    planned = [plan_entry(entry, limits) for entry in entries]
    newest: dict[tuple[str, ...], StreamPosition] = {}
    for item in planned:
        if item.event is None or item.position is None:
            continue
        target = metrics_target(item.event)
        if target is not None and (target not in newest or newest[target] < item.position):
            newest[target] = item.position
    result = []
    for item in planned:
        if item.event is not None and item.position is not None and may_be_coalesced(item.event):
            target = metrics_target(item.event)
            if target is not None and item.position < newest[target]:
                item = Planned(item.entry, item.event, item.position, Outcome.COALESCED)
        result.append(item)
    return result
