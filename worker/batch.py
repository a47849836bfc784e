"""Planning one batch, without I/O: find superseded snapshots, then parse the rest.

A snapshot event carries a target's whole current state, so within one batch only
the newest per target needs writing; the older ones are ``coalesced``. This is what
lets a backlog drain far faster than one write per entry.

Coalescing needs only an entry's envelope (version, type, job, client, position), so
that is read first, without parsing the metrics JSON; only the entries that will be
written are parsed and validated in full. An entry superseded in its batch therefore
has its envelope checked but not its metrics text, which would not be written anyway.
If a superseding entry turns out invalid, the batch is planned again the slow way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.effects import may_be_coalesced, metrics_target
from worker.events import Event, InvalidEntry, Limits, parse_entry
from worker.outcomes import Outcome
from worker.positions import InvalidStreamId, StreamPosition
from worker.stream import Entry


@dataclass(frozen=True, slots=True)
class Planned:
    """One entry of the batch: either an event to apply, or an outcome already decided."""

    entry: Entry
    event: Event | None = None
    position: StreamPosition | None = None
    outcome: Outcome | None = None
    error: str = ""
    type_hint: str = "unknown"

    @property
    def event_type(self) -> str:
        return self.event.type if self.event is not None else self.type_hint


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


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What coalescing needs of a metrics snapshot, read without parsing its JSON."""

    type: str
    target: tuple[str, ...]
    position: StreamPosition
    finishes_job: bool  # conservatively: "fit_end" appears anywhere in the text


_METRICS_TYPES = {b"server.metrics": "server.metrics", b"client.metrics": "client.metrics"}


def _envelope(entry: Entry, limits: Limits) -> _Envelope | None:
    """The envelope of a plain v1 metrics snapshot; ``None`` for anything else (status
    events, bad or unusual entries), which then simply gets the full parse."""
    fields = entry.fields
    if fields is None or fields.get(b"v") != b"1":
        return None
    event_type = _METRICS_TYPES.get(fields.get(b"type", b""))
    job = fields.get(b"job_id")
    metrics = fields.get(b"metrics")
    if event_type is None or not job or metrics is None or not metrics.startswith(b"{"):
        return None
    if sum(len(key) + len(value) for key, value in fields.items()) > limits.max_entry_bytes:
        return None
    try:
        job_id = job.decode()
        if event_type == "server.metrics":
            target: tuple[str, ...] = ("server", job_id)
        else:
            client = fields.get(b"client_uuid")
            if not client:
                return None
            target = ("client", job_id, client.decode())
        own = StreamPosition.parse(entry.id)
        origin = fields.get(b"origin_id")
        position = own if origin is None else StreamPosition.parse(origin)
    except (UnicodeDecodeError, InvalidStreamId):
        return None
    if origin is not None and position >= own:
        return None
    return _Envelope(event_type, target, position, b"fit_end" in metrics)


def plan_batch(entries: Sequence[Entry], limits: Limits) -> list[Planned]:
    """Plan a batch in stream order; superseded snapshots are marked ``coalesced``."""
    envelopes = [_envelope(entry, limits) for entry in entries]
    newest: dict[tuple[str, ...], StreamPosition] = {}
    for envelope in envelopes:
        if envelope is not None and (
            envelope.target not in newest or newest[envelope.target] < envelope.position
        ):
            newest[envelope.target] = envelope.position
    planned = []
    for entry, envelope in zip(entries, envelopes, strict=True):
        if (
            envelope is not None
            and not envelope.finishes_job
            and envelope.position < newest[envelope.target]
        ):
            planned.append(
                Planned(
                    entry,
                    position=envelope.position,
                    outcome=Outcome.COALESCED,
                    type_hint=envelope.type,
                )
            )
            continue
        item = plan_entry(entry, limits)
        if envelope is not None and item.event is None:
            # A snapshot that superseded others is itself invalid: decide without shortcuts.
            return plan_batch_fully(entries, limits)
        planned.append(item)
    return planned


def plan_batch_fully(entries: Sequence[Entry], limits: Limits) -> list[Planned]:
    """Parse every entry, then coalesce by the parsed events (the reference planner)."""
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
