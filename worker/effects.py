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
compare-and-set write pinned to the state it saw. A batch decided on remembered state
rather than a read pins each write to the exact state of the parts it depends on
(:func:`pinned_to_groups`) and confirms write-less outcomes with a no-op request
(:func:`check_on_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

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

SERVER_POSITION: Final = "server_metrics_position"
STATUS_POSITION: Final = "status_position"
CLIENT_POSITION: Final = "metrics_position"
# Liveness, in stream time (milliseconds since the epoch, as in entry IDs).
SERVER_LAST_EVENT: Final = "server_last_event_ms"
CLIENT_LAST_EVENT: Final = "last_event_ms"  # in each clients_info element
# BSON holds int64: an entry ID's milliseconds can be larger (an explicit XADD ID).
_INT64_MAX: Final = 2**63 - 1

RUNNING: Final = (JobStatus.NOT_STARTED.value, JobStatus.IN_PROGRESS.value)
FINISHED: Final = (JobStatus.FINISHED_SUCCESSFULLY.value, JobStatus.FINISHED_WITH_ERROR.value)

# The fields a miss needs to classify an event: never the (large) metrics texts.
CLASSIFY_PROJECTION: Final = {
    "status": 1,
    SERVER_POSITION: 1,
    STATUS_POSITION: 1,
    "clients_info.uuid": 1,
    f"clients_info.{CLIENT_POSITION}": 1,
    SERVER_LAST_EVENT: 1,
    f"clients_info.{CLIENT_LAST_EVENT}": 1,
}


def liveness_ms(position: StreamPosition) -> int:
    """The stream time an event stands for: its position's milliseconds (the entry ID's,
    or the vouched ``origin_id``'s), capped to what BSON can store."""
    return min(position.milliseconds, _INT64_MAX)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Write:
    """One ``update_one``: the filter (``_id`` plus guard) and the update document."""

    filter: dict[str, Any]
    update: dict[str, Any]
    outcome: Outcome = Outcome.APPLIED
    array_filters: list[dict[str, Any]] | None = None


def _not_at_or_after(key: str) -> dict[str, Any]:
    """Matches a missing position, or one strictly before ``key``."""
    return {"$not": {"$gte": key}}


def _finish_may_apply(key: str) -> dict[str, Any]:
    """The job is not finished yet, or was finished by an event later in the stream."""
    return {"$or": [{"status": {"$in": list(RUNNING)}}, {STATUS_POSITION: {"$gt": key}}]}


def _finish_fields(
    status: JobStatus, key: str, error_message: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    to_set: dict[str, Any] = {"status": status.value, STATUS_POSITION: key}
    to_unset: dict[str, Any] = {}
    # FLorist writes error_message as null (Job.create): a finish without a message keeps
    # that shape, and clears one a later finish had written.
    to_set["error_message"] = error_message if status is JobStatus.FINISHED_WITH_ERROR else None
    return to_set, to_unset


def _update(
    to_set: dict[str, Any],
    to_unset: dict[str, Any] | None = None,
    to_max: dict[str, Any] | None = None,
) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if to_set:
        update["$set"] = to_set
    if to_unset:
        update["$unset"] = to_unset
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
        to_unset: dict[str, Any] = {}
        if event.finishes_job:
            finish_set, to_unset = _finish_fields(JobStatus.FINISHED_SUCCESSFULLY, key, None)
            to_set.update(finish_set)
            guard.update(_finish_may_apply(key))
        return Write(guard, _update(to_set, to_unset, {SERVER_LAST_EVENT: ms}))
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
        to_set, to_unset = _finish_fields(event.status, key, event.error_message)
        return Write({"_id": event.job_id, **_finish_may_apply(key)}, _update(to_set, to_unset))
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
    to_unset: dict[str, Any] = {}
    to_max: dict[str, Any] = {}
    if metrics_apply:
        to_set.update({"server_metrics": event.metrics_text, SERVER_POSITION: key})
        to_max[SERVER_LAST_EVENT] = ms
    if finish_applies:
        finish_set, to_unset = _finish_fields(JobStatus.FINISHED_SUCCESSFULLY, key, None)
        to_set.update(finish_set)
    guard = _pinned(document, SERVER_POSITION, "status", STATUS_POSITION)
    return Write(guard, _update(to_set, to_unset, to_max))


def _matching_clients(document: dict[str, Any], uuid: str | None) -> list[dict[str, Any]]:
    clients = document.get("clients_info")
    if not isinstance(clients, list):
        clients = []  # not a list of clients: no element can match
    return [c for c in clients if isinstance(c, dict) and c.get("uuid") == uuid]


def _after_miss_client(
    event: ClientMetricsEvent, key: str, ms: int, document: dict[str, Any]
) -> Outcome | Write:
    matching = _matching_clients(document, event.client_uuid)
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
        matching = _matching_clients(document, event.client_uuid)
        if not matching:
            return Outcome.UNKNOWN_CLIENT
        current = [c.get(CLIENT_LAST_EVENT) for c in matching]
    if any(_is_number(value) and value >= ms for value in current):
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
        to_set, to_unset = _finish_fields(event.status, key, event.error_message)
        return Write(_pinned(document, "status", STATUS_POSITION), _update(to_set, to_unset))
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


def _max_into(container: dict[str, Any], field: str, value: Any) -> None:
    """``$max`` as MongoDB applies it to the values the worker stores: a missing or null
    field takes the value, a number the larger, another type (above numbers in BSON's
    order) stays."""
    current = container.get(field)
    if current is None or (_is_number(current) and current < value):
        container[field] = value


def apply_to(document: dict[str, Any], write: Write) -> None:
    """Apply ``write`` to an in-memory (projected) copy of its document, as MongoDB would:
    how a batch foresees the state each of its events meets (see
    :meth:`worker.store.MongoJobStore.apply_batch`). Knows the shapes this module builds:
    top-level ``$set``/``$unset``, and ``clients_info.$[client].<field>`` with the one
    array filter on ``client.uuid``."""
    uuid = (write.array_filters or [{}])[0].get("client.uuid")
    for operator in ("$set", "$max"):
        for path, value in write.update.get(operator, {}).items():
            if path.startswith("clients_info.$[client]."):
                field = path.removeprefix("clients_info.$[client].")
                targets = _matching_clients(document, uuid)
            else:
                field, targets = path, [document]
            for target in targets:
                if operator == "$set":
                    target[field] = value
                else:
                    _max_into(target, field, value)
    for path in write.update.get("$unset", {}):
        document.pop(path, None)


def projected(document: dict[str, Any]) -> dict[str, Any]:
    """Only what deciding an event reads (:data:`CLASSIFY_PROJECTION`, the ``_id`` and
    the server uuid) of a document a batch has played on: not the metrics texts, which
    may be a MiB each."""
    kept = {name: document[name] for name in _KEPT if name in document}
    clients = document.get("clients_info")
    if isinstance(clients, list):
        kept["clients_info"] = [
            {name: member[name] for name in _KEPT_OF_CLIENT if name in member}
            if isinstance(member, dict)
            else member
            for member in clients
        ]
    elif "clients_info" in document:
        kept["clients_info"] = clients
    return kept


_KEPT: Final = ("_id", "server_uuid", *(n for n in CLASSIFY_PROJECTION if "." not in n))
_KEPT_OF_CLIENT: Final = tuple(
    n.removeprefix("clients_info.") for n in CLASSIFY_PROJECTION if n.startswith("clients_info.")
)


def classified_state(document: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What the guards and the liveness fields hold in a (projected) job document: equal
    states mean the same decisions for every event. ``None`` for a missing document."""
    if document is None:
        return None
    clients = document.get("clients_info")
    members = tuple(
        (member.get("uuid"), member.get(CLIENT_POSITION), member.get(CLIENT_LAST_EVENT))
        if isinstance(member, dict)
        else (repr(member),)
        for member in (clients if isinstance(clients, list) else [])
    )
    return (
        document.get("status"),
        document.get(SERVER_POSITION),
        document.get(STATUS_POSITION),
        document.get(SERVER_LAST_EVENT),
        members,
    )


Group = tuple[str, ...]


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


def group_state(document: dict[str, Any] | None, group: Group) -> tuple[Any, ...] | None:
    """What ``document`` holds for ``group`` (see :func:`groups_of`)."""
    if document is None:
        return None
    if group[0] == "server":
        return (document.get(SERVER_POSITION), document.get(SERVER_LAST_EVENT))
    if group[0] == "status":
        return (document.get("status"), document.get(STATUS_POSITION))
    clients = document.get("clients_info")
    return tuple(
        (member.get(CLIENT_POSITION), member.get(CLIENT_LAST_EVENT))
        for member in (clients if isinstance(clients, list) else [])
        if isinstance(member, dict) and member.get("uuid") == group[1]
    )


def _group_pins(event: Event, document: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Filters matching exactly what ``document`` holds in each part the event reads or
    changes (:func:`groups_of`), liveness too; ``None`` when a part cannot be pinned
    exactly (a client uuid held by no element or by more than one, clients that are
    not objects with distinct uuids)."""
    pins: list[dict[str, Any]] = []
    for group in groups_of(event):
        if group[0] == "server":
            pins.append(
                {
                    SERVER_POSITION: document.get(SERVER_POSITION),
                    SERVER_LAST_EVENT: document.get(SERVER_LAST_EVENT),
                }
            )
        elif group[0] == "status":
            pins.append(
                {"status": document.get("status"), STATUS_POSITION: document.get(STATUS_POSITION)}
            )
        else:
            members = _distinct_members(document)
            matching = [member for member in members or [] if member["uuid"] == group[1]]
            if members is None or len(matching) != 1:
                return None
            element = {
                "uuid": group[1],
                CLIENT_POSITION: matching[0].get(CLIENT_POSITION),
                CLIENT_LAST_EVENT: matching[0].get(CLIENT_LAST_EVENT),
            }
            # The element as remembered, in a list of exactly the remembered uuids, each
            # once (as many elements as distinct uuids, all present): a client added,
            # repeated or renamed by another writer makes the write miss.
            pins.append(
                {
                    "clients_info.uuid": {"$all": [member["uuid"] for member in members]},
                    "clients_info": {"$elemMatch": element, "$size": len(members)},
                }
            )
    return pins


def _distinct_members(document: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``clients_info`` elements when they are objects with distinct text uuids
    (what an exact pin needs), else ``None``."""
    clients = document.get("clients_info")
    if not isinstance(clients, list):
        return None
    uuids = [member.get("uuid") if isinstance(member, dict) else None for member in clients]
    if not all(isinstance(uuid, str) for uuid in uuids) or len(set(uuids)) != len(uuids):
        return None
    return clients


def _part_of(path: str) -> str:
    """Which part of a job document (:func:`groups_of`) a written path belongs to."""
    if path.startswith("clients_info."):
        return "client"
    if path in ("status", STATUS_POSITION, "error_message"):
        return "status"
    return "server"


_POSITION_FIELDS: Final = {
    "server": SERVER_POSITION,
    "status": STATUS_POSITION,
    "client": f"clients_info.$[client].{CLIENT_POSITION}",
}


def pinned_to_groups(write: Write, event: Event, document: dict[str, Any]) -> Write | None:
    """``write``, matching only while every part of the document its event reads or
    changes (:func:`groups_of`) holds exactly what ``document`` holds, liveness too.

    For a write decided on remembered state rather than on a read: if memory was wrong,
    the write misses (it never applies on a state it was not decided on), and no later
    write of the same part in the batch can match either (each is pinned to the exact
    state the one before it leaves), so the writes that took effect are a prefix and the
    settle read tells exactly which.

    That holds only if no other writer can leave a part exactly as this write would
    without applying this very entry: so the write must store its entry's position in
    every part it changes (a position is unique to its entry); a part it only reads
    (the status, for a finishing snapshot whose finish does not win) it leaves as
    pinned, like :func:`check_on_groups`. ``None`` otherwise (a
    heartbeat, the move to ``IN_PROGRESS``, which another writer such as the API can
    make too) and when a part cannot be pinned exactly: such an event is decided on a
    read instead."""
    stored = write.update.get("$set", {})
    touched = {path for operation in write.update.values() for path in operation}
    for group in groups_of(event):
        changes_part = any(_part_of(path) == group[0] for path in touched)
        if changes_part and _POSITION_FIELDS[group[0]] not in stored:
            return None
    pins = _group_pins(event, document)
    if pins is None:
        return None
    return Write(_with_pins(write.filter, pins), write.update, write.outcome, write.array_filters)


def _is_operators(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(str(k).startswith("$") for k in value)


def _implied(condition: Any, pin: Any) -> bool:
    """Whether ``pin`` implies ``condition`` on the same path: an equality with one value
    of an ``$all`` list (some element equals it)."""
    return (
        not isinstance(condition, dict)
        and isinstance(pin, dict)
        and list(pin) == ["$all"]
        and condition in pin["$all"]
    )


def _with_pins(query: dict[str, Any], pins: list[dict[str, Any]]) -> dict[str, Any]:
    """``query`` and every pin, as one flat filter where the names do not clash (the
    same condition twice, or operators on the same field that can sit side by side),
    else as an ``$and``: the same documents match either way; the flat form is what a
    reader expects in a log line, and mongomock-ng evaluates it faster."""
    merged = dict(query)
    for pin in pins:
        for name, condition in pin.items():
            if name not in merged or merged[name] == condition or _implied(merged[name], condition):
                merged[name] = condition
            elif (
                _is_operators(merged[name])
                and _is_operators(condition)
                and not merged[name].keys() & condition.keys()
            ):
                merged[name] = {**merged[name], **condition}
            else:
                return {"$and": [query, *pins]}
    return merged


def check_on_groups(outcome: Outcome, event: Event, document: dict[str, Any]) -> Write | None:
    """A write that changes nothing and matches only while the parts of the document an
    outcome was decided on hold exactly what ``document`` holds: it confirms, in the same
    ``bulk_write``, an outcome decided on remembered state without a write of its own (a
    duplicate, a rejected transition), and chains like :func:`pinned_to_groups`. It sets
    a pinned position or status to the value it is pinned to. ``None`` for a client's
    part, or when no such field holds a value (setting a missing field is a change)."""
    pins = _group_pins(event, document)
    if pins is None or any(group[0] == "client" for group in groups_of(event)):
        return None
    for pin in pins:
        for name in (SERVER_POSITION, "status", STATUS_POSITION):
            if pin.get(name) is not None:
                no_change = {"$set": {name: pin[name]}}
                return Write(_with_pins({"_id": document["_id"]}, pins), no_change, outcome)
    return None
