"""What one event does to its Job document: pure functions, no I/O.

Each event becomes ONE guarded ``update_one`` on its job's document (an event that
names its job by a uuid is resolved to the job's ``_id`` first, by the store). The
guard makes redelivery and reordering harmless:

* metrics targets (the job's server metrics, each client's metrics) remember the
  position of the last event applied; an event at or before it changes nothing;
* the status follows ``NOT_STARTED -> IN_PROGRESS -> FINISHED_*`` and, among
  finishing events (``job.status`` FINISHED_* and server metrics with ``fit_end``),
  the one earliest in the stream wins. Deciding "first" by position rather than by
  arrival is what lets two workers take a job's events in any order and still leave
  the document one worker in stream order would;
* liveness (when the job's server and each client were last heard from, in stream
  time: the milliseconds of the event's position) only moves forward (``$max``, guarded
  by "not already at or after"): every metrics event and heartbeat of a host counts, in
  the same update as its metrics; a ``host.heartbeat`` changes nothing else.

:func:`first_write` is the optimistic update for the common case. When it matches
nothing, the store reads the document and :func:`after_miss` either names the
outcome (unknown job or client, duplicate, rejected transition) or returns a
compare-and-set write pinned to the state it saw: a batch decides all its events that
way, in stream order, on one read of its jobs (:mod:`worker.store`). The document's
field names and the write's shape are :mod:`worker.document`.
"""

from __future__ import annotations

from typing import Any, Final

from worker.document import (
    CLIENT_LAST_EVENT,
    CLIENT_POSITION,
    SERVER_LAST_EVENT,
    SERVER_POSITION,
    STATUS_POSITION,
    Group,
    Write,
    is_number,
    matching_clients,
)
from worker.entities import JobStatus
from worker.events import (
    ClientMetricsEvent,
    Event,
    HeartbeatEvent,
    JobStatusEvent,
    ServerMetricsEvent,
)
from worker.outcomes import Outcome
from worker.positions import StreamPosition

# BSON holds int64: an entry ID's milliseconds can be larger (an explicit XADD ID).
_INT64_MAX: Final = 2**63 - 1

RUNNING: Final = (JobStatus.NOT_STARTED.value, JobStatus.IN_PROGRESS.value)
FINISHED: Final = (JobStatus.FINISHED_SUCCESSFULLY.value, JobStatus.FINISHED_WITH_ERROR.value)


def liveness_ms(position: StreamPosition) -> int:
    """The stream time an event stands for: its position's milliseconds (the entry ID's,
    or the vouched ``origin_id``'s), capped to what BSON can store."""
    return min(position.milliseconds, _INT64_MAX)


def _not_at_or_after(key: str) -> dict[str, Any]:
    """Matches a missing position, or one strictly before ``key``."""
    return {"$not": {"$gte": key}}


def _finish_may_apply(key: str) -> dict[str, Any]:
    """The job is not finished yet, or was finished by an event later in the stream."""
    return {"$or": [{"status": {"$in": list(RUNNING)}}, {STATUS_POSITION: {"$gt": key}}]}


def _finish_fields(status: JobStatus, key: str, error_message: str | None) -> dict[str, Any]:
    # FLorist writes error_message as null (Job.create): a finish without a message keeps
    # that shape, and clears one a later finish had written.
    message = error_message if status is JobStatus.FINISHED_WITH_ERROR else None
    return {"status": status.value, STATUS_POSITION: key, "error_message": message}


def _update(to_set: dict[str, Any], to_max: dict[str, Any] | None = None) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if to_set:
        update["$set"] = to_set
    if to_max:
        update["$max"] = to_max
    return update


def is_finishing(event: Event) -> bool:
    """A finishing event (``job.status`` FINISHED_*, a snapshot with ``fit_end``): its
    position decides which finish came first, so it is never coalesced away."""
    if isinstance(event, JobStatusEvent):
        return event.status.value in FINISHED
    return isinstance(event, ServerMetricsEvent) and event.finishes_job


def _client_write(event: ClientMetricsEvent, key: str, ms: int) -> Write:
    """Every element whose uuid equals ``client_uuid`` exactly is guarded and updated
    alike (an array filter), so a list with a repeated uuid cannot take an old snapshot
    into its second copy."""
    uuid = event.client_uuid
    newer_or_same = {"uuid": uuid, CLIENT_POSITION: {"$gte": key}}
    return Write(
        {
            "_id": event.job_id,
            "clients_info.uuid": uuid,
            "clients_info": {"$not": {"$elemMatch": newer_or_same}},
        },
        _update(
            {
                "clients_info.$[client].metrics": event.metrics_text,
                f"clients_info.$[client].{CLIENT_POSITION}": key,
            },
            to_max={f"clients_info.$[client].{CLIENT_LAST_EVENT}": ms},
        ),
        array_filters=[{"client.uuid": uuid}],
    )


def _heartbeat_write(event: HeartbeatEvent, ms: int) -> Write:
    """Liveness only, guarded like a position ("not at or after"), so a heartbeat that
    brings nothing new is a ``duplicate``; ``$max`` makes any order of them safe."""
    if event.host_type == "server":
        return Write(
            {"_id": event.job_id, SERVER_LAST_EVENT: {"$not": {"$gte": ms}}},
            _update({}, to_max={SERVER_LAST_EVENT: ms}),
        )
    uuid = event.client_uuid
    return Write(
        {
            "_id": event.job_id,
            "clients_info.uuid": uuid,
            "clients_info": {
                "$not": {"$elemMatch": {"uuid": uuid, CLIENT_LAST_EVENT: {"$gte": ms}}}
            },
        },
        _update({}, to_max={f"clients_info.$[client].{CLIENT_LAST_EVENT}": ms}),
        array_filters=[{"client.uuid": uuid}],
    )


def first_write(event: Event, position: StreamPosition) -> Write | None:
    """The optimistic update; ``None`` when the event can only be classified by a read."""
    key = position.key
    ms = liveness_ms(position)
    if isinstance(event, ServerMetricsEvent):
        to_set: dict[str, Any] = {
            "server_metrics": event.metrics_text,
            SERVER_POSITION: key,
        }
        guard: dict[str, Any] = {"_id": event.job_id, SERVER_POSITION: _not_at_or_after(key)}
        if event.finishes_job:
            to_set.update(_finish_fields(JobStatus.FINISHED_SUCCESSFULLY, key, None))
            guard.update(_finish_may_apply(key))
        return Write(guard, _update(to_set, {SERVER_LAST_EVENT: ms}))
    if isinstance(event, ClientMetricsEvent):
        return _client_write(event, key, ms)
    if isinstance(event, HeartbeatEvent):
        return _heartbeat_write(event, ms)
    if event.status is JobStatus.IN_PROGRESS:
        return Write(
            {"_id": event.job_id, "status": JobStatus.NOT_STARTED.value},
            _update({"status": JobStatus.IN_PROGRESS.value}),
        )
    if event.status.value in FINISHED:
        to_set = _finish_fields(event.status, key, event.error_message)
        return Write({"_id": event.job_id, **_finish_may_apply(key)}, _update(to_set))
    return None  # NOT_STARTED never changes a document: only a read can classify it.


def _finish_wins_over(document: dict[str, Any], key: str) -> bool:
    """Would a finish at ``key`` replace the document's status (see module docstring)?"""
    if document.get("status") not in FINISHED:
        return True
    current = document.get(STATUS_POSITION)
    return isinstance(current, str) and current > key


def _pinned(document: dict[str, Any], *names: str) -> dict[str, Any]:
    """A filter matching the document only while ``names`` still hold the values read."""
    pinned: dict[str, Any] = {"_id": document["_id"]}
    for name in names:
        pinned[name] = document.get(name)  # None matches a missing field too
    return pinned


def _after_miss_server(
    event: ServerMetricsEvent, key: str, ms: int, document: dict[str, Any]
) -> Outcome | Write:
    current = document.get(SERVER_POSITION)
    metrics_apply = not (isinstance(current, str) and current >= key)
    finish_applies = event.finishes_job and _finish_wins_over(document, key)
    if not metrics_apply and not finish_applies:
        return Outcome.DUPLICATE
    to_set: dict[str, Any] = {}
    to_max: dict[str, Any] = {}
    if metrics_apply:
        to_set.update({"server_metrics": event.metrics_text, SERVER_POSITION: key})
        to_max[SERVER_LAST_EVENT] = ms
    if finish_applies:
        to_set.update(_finish_fields(JobStatus.FINISHED_SUCCESSFULLY, key, None))
    guard = _pinned(document, SERVER_POSITION, "status", STATUS_POSITION)
    return Write(guard, _update(to_set, to_max))


def _after_miss_client(
    event: ClientMetricsEvent, key: str, ms: int, document: dict[str, Any]
) -> Outcome | Write:
    matching = matching_clients(document, event.client_uuid)
    if not matching:
        return Outcome.UNKNOWN_CLIENT
    positions = [c.get(CLIENT_POSITION) for c in matching]
    if any(isinstance(current, str) and current >= key for current in positions):
        return Outcome.DUPLICATE
    return _client_write(event, key, ms)  # the element changed under us: same guard again


def _after_miss_heartbeat(
    event: HeartbeatEvent, ms: int, document: dict[str, Any]
) -> Outcome | Write:
    if event.host_type == "server":
        current: list[Any] = [document.get(SERVER_LAST_EVENT)]
    else:
        matching = matching_clients(document, event.client_uuid)
        if not matching:
            return Outcome.UNKNOWN_CLIENT
        current = [c.get(CLIENT_LAST_EVENT) for c in matching]
    if any(is_number(value) and value >= ms for value in current):
        return Outcome.DUPLICATE
    return _heartbeat_write(event, ms)


def _after_miss_status(
    event: JobStatusEvent, key: str, document: dict[str, Any]
) -> Outcome | Write:
    status = document.get("status")
    if event.status.value == status and not is_finishing(event):
        return Outcome.DUPLICATE
    if event.status is JobStatus.NOT_STARTED:
        return Outcome.REJECTED_TRANSITION
    if event.status is JobStatus.IN_PROGRESS:
        if status == JobStatus.NOT_STARTED.value:
            return Write(
                _pinned(document, "status"), _update({"status": JobStatus.IN_PROGRESS.value})
            )
        return Outcome.REJECTED_TRANSITION
    if _finish_wins_over(document, key):
        to_set = _finish_fields(event.status, key, event.error_message)
        return Write(_pinned(document, "status", STATUS_POSITION), _update(to_set))
    if status == event.status.value or document.get(STATUS_POSITION) == key:
        return Outcome.DUPLICATE
    return Outcome.REJECTED_TRANSITION


def after_miss(
    event: Event, position: StreamPosition, document: dict[str, Any] | None
) -> Outcome | Write:
    """Classify an event whose guarded write matched nothing, given the document now.

    Returns the outcome, or a compare-and-set write when the document has changed
    since the first attempt and the event still has an effect.
    """
    if document is None:
        return Outcome.UNKNOWN_JOB
    key = position.key
    ms = liveness_ms(position)
    if isinstance(event, ServerMetricsEvent):
        return _after_miss_server(event, key, ms, document)
    if isinstance(event, ClientMetricsEvent):
        return _after_miss_client(event, key, ms, document)
    if isinstance(event, HeartbeatEvent):
        return _after_miss_heartbeat(event, ms, document)
    return _after_miss_status(event, key, document)


def metrics_target(event: Event) -> tuple[str, ...] | None:
    """The target whose position guards this event; ``None`` for status events. Events
    that name their job by a uuid are keyed by it (one FL process, one uuid)."""
    if isinstance(event, ServerMetricsEvent):
        return ("server", *event.identity)
    if isinstance(event, ClientMetricsEvent):
        return ("client", *event.identity, event.client_uuid)
    return None


def coalesce_target(event: Event) -> tuple[str, ...] | None:
    """What an event may be coalesced into, within a batch: the newest snapshot of its
    metrics target, or (a heartbeat) the newest heartbeat of the same host. ``None`` for
    status events."""
    if isinstance(event, HeartbeatEvent):
        host = ("client", str(event.client_uuid)) if event.host_type == "client" else ("server",)
        return ("heartbeat", *event.identity, *host)
    return metrics_target(event)


def may_be_coalesced(event: Event) -> bool:
    """A snapshot replaces an older one of its target, except a finishing one: its
    position decides which finish came first, so it is always written. A heartbeat is
    replaced by a newer heartbeat of its host (liveness keeps only the newest)."""
    return coalesce_target(event) is not None and not is_finishing(event)


def groups_of(event: Event) -> tuple[Group, ...]:
    """The parts of a job document an event's decision reads and its write changes: the
    server target, the status, or one client. Events of different groups never affect
    each other's decisions, so a batch can be settled group by group."""
    if isinstance(event, HeartbeatEvent):
        if event.host_type == "server":
            return (("server",),)
        return (("client", str(event.client_uuid)),)
    if isinstance(event, ServerMetricsEvent):
        return (("server",), ("status",)) if event.finishes_job else (("server",),)
    if isinstance(event, ClientMetricsEvent):
        return (("client", event.client_uuid),)
    return (("status",),)
