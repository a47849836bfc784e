"""The v1 wire format of a FLorist event: names, limits, and the producer-side checks.

An event is one Redis stream entry of flat text fields:

==================  ==========================================================================
``v``               schema version, ``"1"``
``type``            ``server.metrics``, ``client.metrics``, ``job.status`` or ``host.heartbeat``
``job_id``          the Job document's ``_id``. Optional since the uuid addition: a
                    ``server.metrics`` or ``job.status`` entry may name its job by
                    ``server_uuid`` instead, a ``client.metrics`` entry by ``client_uuid``
                    alone
``server_uuid``     the FL server's uuid (``Job.server_uuid``); used when ``job_id`` is absent
``client_uuid``     ``ClientInfo.uuid`` of the reporting client; required for client.metrics
``metrics``         JSON text of an object: the reporter's whole current snapshot
``status``          a ``JobStatus`` value (job.status)
``host_type``       ``server`` or ``client`` (host.heartbeat): whose liveness it reports
``error_message``   optional, job.status: why a job finished with an error
``sent_at``         optional: the producer's clock, ISO 8601
``origin_id``       set only when a dead letter is requeued: the entry ID it had first
==================  ==========================================================================

Unknown extra fields are ignored. What each kind of entry must hold is stated once, in
:data:`RULES` (with :func:`rule_of`, :func:`broken_rule` and :func:`is_newer_version`):
:func:`check_entry` checks a field map from it here, and the worker's fast path from the
same table, so the two cannot drift; the worker's test suite proves they agree with its
models, which word the worker's errors. The builders
(:func:`server_metrics_fields` and friends) turn Python values into such a field map and
refuse, with :class:`InvalidEvent`, anything the worker would refuse.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from florist_events.jsontext import dumps_strict, nesting_depth

__all__ = [
    "CLIENT_METRICS",
    "DEFAULT_MAXLEN",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_METRICS_DEPTH",
    "DEFAULT_STREAM",
    "EVENT_TYPES",
    "FIELD_CLIENT_UUID",
    "FIELD_ERROR_MESSAGE",
    "FIELD_HOST_TYPE",
    "FIELD_JOB_ID",
    "FIELD_METRICS",
    "FIELD_ORIGIN_ID",
    "FIELD_SENT_AT",
    "FIELD_SERVER_UUID",
    "FIELD_STATUS",
    "FIELD_TYPE",
    "FIELD_VERSION",
    "HOST_HEARTBEAT",
    "HOST_TYPES",
    "JOB_STATUS",
    "JOB_STATUSES",
    "RULES",
    "SCHEMA_VERSION",
    "SERVER_METRICS",
    "STREAM_ENV",
    "EntryRule",
    "InvalidEvent",
    "Limits",
    "LimitsLike",
    "broken_rule",
    "check_entry",
    "client_metrics_fields",
    "entry_size",
    "heartbeat_fields",
    "is_newer_version",
    "rule_of",
    "server_metrics_fields",
    "status_fields",
    "stream_from_env",
    "utc_now_iso",
]

SCHEMA_VERSION: Final = 1

SERVER_METRICS: Final = "server.metrics"
CLIENT_METRICS: Final = "client.metrics"
JOB_STATUS: Final = "job.status"
# Added after v1 (same version: an optional event type). A worker that predates it
# dead-letters it as `invalid` (kept, requeueable): upgrade the workers first.
HOST_HEARTBEAT: Final = "host.heartbeat"
EVENT_TYPES: Final = (SERVER_METRICS, CLIENT_METRICS, JOB_STATUS, HOST_HEARTBEAT)
HOST_TYPES: Final = ("server", "client")

# FLorist's JobStatus values, in its order.
JOB_STATUSES: Final = ("NOT_STARTED", "IN_PROGRESS", "FINISHED_WITH_ERROR", "FINISHED_SUCCESSFULLY")

FIELD_VERSION: Final = "v"
FIELD_TYPE: Final = "type"
FIELD_JOB_ID: Final = "job_id"
FIELD_SERVER_UUID: Final = "server_uuid"
FIELD_CLIENT_UUID: Final = "client_uuid"
FIELD_METRICS: Final = "metrics"
FIELD_STATUS: Final = "status"
FIELD_ERROR_MESSAGE: Final = "error_message"
FIELD_SENT_AT: Final = "sent_at"
FIELD_ORIGIN_ID: Final = "origin_id"
FIELD_HOST_TYPE: Final = "host_type"

DEFAULT_STREAM: Final = "florist:events"
STREAM_ENV: Final = "FLORIST_STREAM"
# Approximate MAXLEN of every XADD: the stream keeps at least this many entries (the
# replay window of `florist-worker replay`).
DEFAULT_MAXLEN: Final = 1_000_000
DEFAULT_MAX_ENTRY_BYTES: Final = 1024 * 1024  # all field names and values, UTF-8 bytes
DEFAULT_MAX_METRICS_DEPTH: Final = 32

_VERSION_PATTERN: Final = re.compile(r"[0-9]+")  # ASCII digits (isdigit() takes "²")
_ID_PATTERN: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_ID_PART: Final = 2**64 - 1


def stream_from_env(stream: str | None = None) -> str:
    """``stream`` when given, else ``$FLORIST_STREAM`` when set and not empty, else the default.

    The worker reads the same variable, so one setting moves producers and workers together.
    """
    if stream is not None:
        return stream
    return os.environ.get(STREAM_ENV) or DEFAULT_STREAM


class LimitsLike(Protocol):
    """Anything with the two limits (this module's :class:`Limits`, or the worker's)."""

    @property
    def max_entry_bytes(self) -> int: ...

    @property
    def max_metrics_depth(self) -> int: ...


@dataclass(frozen=True)
class Limits:
    """Bounds on one entry, the same defaults as the worker's (``FLORIST_MAX_*``)."""

    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    max_metrics_depth: int = DEFAULT_MAX_METRICS_DEPTH


class InvalidEvent(ValueError):
    """An event that cannot be published as given (the worker would dead-letter it).

    ``outcome`` is what the worker would file it as: ``invalid`` or ``unsupported_version``.
    """

    def __init__(self, message: str, outcome: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.outcome = outcome


def utc_now_iso() -> str:
    """The ``sent_at`` value: now, UTC, ISO 8601 with microseconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def entry_size(fields: Mapping[str, str]) -> int:
    """Size of an entry as the worker measures it: field names and values, UTF-8 bytes."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in fields.items())


# --- the rules of an entry, stated once ----------------------------------------------------


def is_newer_version(version: Any) -> bool:
    """``version`` is a schema version after this one: ASCII digits, of any length.

    An entry with such a ``v`` is ``unsupported_version`` (kept, to requeue after an
    upgrade); any other ``v`` but ``"1"`` is ``invalid``. Compared as digits, not with
    ``int()``, which refuses more than 4,300 of them.
    """
    if not isinstance(version, str) or _VERSION_PATTERN.fullmatch(version) is None:
        return False
    digits, current = version.lstrip("0"), str(SCHEMA_VERSION)
    return (len(digits), digits) > (len(current), current)


@dataclass(frozen=True)
class EntryRule:
    """What an entry of one kind must hold besides a known ``v`` and ``type``.

    Beyond these, every entry's ``metrics`` (when ``metrics``) is the JSON text of an
    object within the depth limit, an ``origin_id`` is a stream entry ID, and the whole
    entry is within the size limit.
    """

    kind: str  # how a message names the kind of entry
    required: tuple[str, ...] = ()  # fields that must be present
    not_empty: tuple[str, ...] = ()  # fields that, when present, must not be empty
    one_of: tuple[str, ...] = ()  # at least one of these must be present
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (a field, its allowed values)
    metrics: bool = False  # `metrics` holds a snapshot


_BY_JOB_OR_SERVER: Final = (FIELD_JOB_ID, FIELD_SERVER_UUID)
_BY_CLIENT: Final = (FIELD_JOB_ID, FIELD_CLIENT_UUID)

# The rules of each event type; a heartbeat's depend on its `host_type` too.
RULES: Final[Mapping[tuple[str, str | None], EntryRule]] = {
    (SERVER_METRICS, None): EntryRule(
        SERVER_METRICS,
        required=(FIELD_METRICS,),
        not_empty=_BY_JOB_OR_SERVER,
        one_of=_BY_JOB_OR_SERVER,
        metrics=True,
    ),
    (CLIENT_METRICS, None): EntryRule(
        CLIENT_METRICS,
        required=(FIELD_CLIENT_UUID, FIELD_METRICS),
        not_empty=_BY_CLIENT,
        metrics=True,
    ),
    (JOB_STATUS, None): EntryRule(
        JOB_STATUS,
        required=(FIELD_STATUS,),
        not_empty=_BY_JOB_OR_SERVER,
        one_of=_BY_JOB_OR_SERVER,
        choices=((FIELD_STATUS, JOB_STATUSES),),
    ),
    (HOST_HEARTBEAT, "server"): EntryRule(
        "a server's host.heartbeat", not_empty=_BY_JOB_OR_SERVER, one_of=_BY_JOB_OR_SERVER
    ),
    (HOST_HEARTBEAT, "client"): EntryRule(
        "a client's host.heartbeat", required=(FIELD_CLIENT_UUID,), not_empty=_BY_CLIENT
    ),
}


def rule_of(event_type: str, host_type: str | None) -> EntryRule | None:
    """The rules of an entry of ``event_type`` (a known type); ``None`` for a heartbeat
    whose ``host_type`` is missing or not one of :data:`HOST_TYPES`."""
    return RULES.get((event_type, host_type if event_type == HOST_HEARTBEAT else None))


def broken_rule(rule: EntryRule, fields: Mapping[str, str]) -> str | None:
    """What the first rule of ``rule`` that ``fields`` breaks says; ``None`` if none is."""
    for name in rule.not_empty:
        if fields.get(name) == "":
            return f"field {name!r} must not be empty"
    if rule.one_of and fields.keys().isdisjoint(rule.one_of):
        named = " or ".join(repr(name) for name in rule.one_of)
        return f"missing field {named} (one is required for {rule.kind})"
    for name in rule.required:
        if name not in fields:
            return f"missing field {name!r} (required for {rule.kind})"
    for name, allowed in rule.choices:
        if fields[name] not in allowed:
            return f"unknown {name} {fields[name]!r} (expected one of {', '.join(allowed)})"
    return None


# --- checking a field map (what the worker receives) -------------------------------------


def _text(raw: Any, what: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(f"{what} is not UTF-8 text") from None
    raise InvalidEvent(f"{what} must be text, got {type(raw).__name__}")


def _decode(fields: Mapping[Any, Any]) -> tuple[dict[str, str], int]:
    decoded: dict[str, str] = {}
    size = 0
    for raw_key, raw_value in fields.items():
        key = _text(raw_key, "a field name")
        value = _text(raw_value, f"field {key!r}")
        size += len(key.encode()) + len(value.encode())
        decoded[key] = value
    return decoded, size


def _check_version(fields: Mapping[str, str]) -> None:
    if FIELD_VERSION not in fields:
        raise InvalidEvent("missing field 'v' (the schema version, '1')")
    version = fields[FIELD_VERSION]
    if version == str(SCHEMA_VERSION):
        return
    if is_newer_version(version):
        raise InvalidEvent(
            f"schema version {version} is newer than this producer knows ({SCHEMA_VERSION})",
            outcome="unsupported_version",
        )
    raise InvalidEvent(f"field 'v' must be '{SCHEMA_VERSION}', got {version!r}")


def _check_type(fields: Mapping[str, str]) -> str:
    if FIELD_TYPE not in fields:
        raise InvalidEvent(f"missing field 'type' (one of {', '.join(EVENT_TYPES)})")
    event_type = fields[FIELD_TYPE]
    if event_type not in EVENT_TYPES:
        raise InvalidEvent(
            f"unknown type {event_type!r} (expected one of {', '.join(EVENT_TYPES)})"
        )
    return event_type


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _check_metrics_text(text: str, limit: int) -> None:
    try:
        metrics = json.loads(text)
    except RecursionError:
        raise InvalidEvent("metrics is nested too deeply to parse") from None
    except ValueError as error:  # not JSON, or an integer over Python's digit limit
        raise InvalidEvent(f"metrics is not valid JSON: {error}") from None
    if not isinstance(metrics, dict):
        raise InvalidEvent(f"metrics must be a JSON object, got {_json_kind(metrics)}")
    _check_depth(metrics, limit)


def _check_depth(metrics: Any, limit: int) -> None:
    if nesting_depth(metrics, stop_after=limit) > limit:
        depth = nesting_depth(metrics)
        raise InvalidEvent(f"metrics is nested {depth} levels deep, over the limit of {limit}")


def _check_origin_id(text: str) -> None:
    match = _ID_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidEvent(f"origin_id: not a stream entry ID (expected <ms>-<seq>): {text!r}")
    if int(match.group(1)) > _MAX_ID_PART or int(match.group(2)) > _MAX_ID_PART:
        raise InvalidEvent(f"origin_id: stream entry ID part out of range: {text!r}")


def check_entry(fields: Mapping[Any, Any], limits: LimitsLike | None = None) -> dict[str, str]:
    """Check one entry's field map as the worker will; return it decoded to text.

    Keys and values may be ``str`` or ``bytes`` (as Redis returns them). Raises
    :class:`InvalidEvent` naming the first problem found.
    """
    limits = limits or Limits()
    if not isinstance(fields, Mapping):
        raise InvalidEvent(f"an entry must be a field map, got {type(fields).__name__}")
    decoded, size = _decode(fields)
    if size > limits.max_entry_bytes:
        raise InvalidEvent(f"entry is {size} bytes, over the limit of {limits.max_entry_bytes}")
    _check_version(decoded)
    event_type = _check_type(decoded)
    rule = rule_of(event_type, decoded.get(FIELD_HOST_TYPE))
    if rule is None:  # a heartbeat that does not say whose
        if FIELD_HOST_TYPE not in decoded:
            raise InvalidEvent(f"missing field 'host_type' (required for {event_type})")
        raise InvalidEvent(
            f"field 'host_type' must be 'server' or 'client', got {decoded[FIELD_HOST_TYPE]!r}"
        )
    problem = broken_rule(rule, decoded)
    if problem is not None:
        raise InvalidEvent(problem)
    if rule.metrics:
        _check_metrics_text(decoded[FIELD_METRICS], limits.max_metrics_depth)
    if FIELD_ORIGIN_ID in decoded:
        _check_origin_id(decoded[FIELD_ORIGIN_ID])
    return decoded


# --- building a field map from Python values (what a producer calls) ------------------------


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"field {name!r} must be text, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(f"field {name!r} must not be empty")
    return value


def _scan_metrics(metrics: Mapping[Any, Any]) -> int:
    """Depth of ``metrics``, refusing non-text keys and circular references on the way.

    One depth-first walk, without recursion; a container met again on its own path is a
    cycle (``json.dumps`` would refuse it too), one shared by two branches is fine.
    """
    deepest = 0
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(metrics, 1, False)]
    while stack:
        item, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            continue
        if id(item) in on_path:
            raise InvalidEvent("metrics holds a circular reference")
        deepest = max(deepest, depth)
        on_path.add(id(item))
        stack.append((item, depth, True))
        if isinstance(item, Mapping):
            for key in item:
                if not isinstance(key, str):
                    raise InvalidEvent(
                        f"metrics keys must be text, got {key!r} ({type(key).__name__})"
                    )
            members: Any = item.values()
        else:
            members = item
        stack += [(child, depth + 1, False) for child in members if _is_container(child)]
    return deepest


def _is_container(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple)


def _encode_metrics(metrics: Any, limits: LimitsLike) -> str:
    if not isinstance(metrics, Mapping):
        raise InvalidEvent(f"metrics must be a dict (a JSON object), got {type(metrics).__name__}")
    depth = _scan_metrics(metrics)
    limit = limits.max_metrics_depth
    if depth > limit:
        raise InvalidEvent(f"metrics is nested {depth} levels deep, over the limit of {limit}")
    try:
        return dumps_strict(dict(metrics))
    except (TypeError, ValueError) as error:
        raise InvalidEvent(f"metrics {error}") from None


def _finish(fields: dict[str, str], limits: LimitsLike, sent_at: str | None) -> dict[str, str]:
    entry = {FIELD_VERSION: str(SCHEMA_VERSION), **fields}
    entry[FIELD_SENT_AT] = utc_now_iso() if sent_at is None else sent_at
    for name, value in entry.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(
                f"cannot publish {fields[FIELD_TYPE]}: field {name!r} is not valid UTF-8 text "
                "(a lone surrogate)"
            ) from None
    size = entry_size(entry)
    if size > limits.max_entry_bytes:
        raise InvalidEvent(
            f"cannot publish {fields[FIELD_TYPE]}: entry is {size} bytes, "
            f"over the limit of {limits.max_entry_bytes}"
        )
    return entry


def _context(event_type: str, error: InvalidEvent) -> InvalidEvent:
    return InvalidEvent(f"cannot publish {event_type}: {error.message}", error.outcome)


def server_metrics_fields(
    metrics: Mapping[str, Any],
    *,
    job_id: str | None = None,
    server_uuid: str | None = None,
    limits: LimitsLike | None = None,
    sent_at: str | None = None,
) -> dict[str, str]:
    """A ``server.metrics`` entry naming its job by ``job_id``, ``server_uuid`` or both."""
    limits = limits or Limits()
    try:
        fields = {FIELD_TYPE: SERVER_METRICS, **_server_identity(job_id, server_uuid)}
        fields[FIELD_METRICS] = _encode_metrics(metrics, limits)
    except InvalidEvent as error:
        raise _context(SERVER_METRICS, error) from None
    return _finish(fields, limits, sent_at)


def client_metrics_fields(
    metrics: Mapping[str, Any],
    *,
    client_uuid: str,
    job_id: str | None = None,
    limits: LimitsLike | None = None,
    sent_at: str | None = None,
) -> dict[str, str]:
    """A ``client.metrics`` entry: ``client_uuid`` always, ``job_id`` when the client knows it."""
    limits = limits or Limits()
    try:
        fields = {FIELD_TYPE: CLIENT_METRICS}
        checked_job = _optional_text(job_id, FIELD_JOB_ID)
        if checked_job is not None:
            fields[FIELD_JOB_ID] = checked_job
        checked_client = _optional_text(client_uuid, FIELD_CLIENT_UUID)
        if checked_client is None:
            raise InvalidEvent(f"missing field 'client_uuid' (required for {CLIENT_METRICS})")
        fields[FIELD_CLIENT_UUID] = checked_client
        fields[FIELD_METRICS] = _encode_metrics(metrics, limits)
    except InvalidEvent as error:
        raise _context(CLIENT_METRICS, error) from None
    return _finish(fields, limits, sent_at)


def status_fields(
    status: Any,
    *,
    job_id: str | None = None,
    server_uuid: str | None = None,
    error_message: str | None = None,
    limits: LimitsLike | None = None,
    sent_at: str | None = None,
) -> dict[str, str]:
    """A ``job.status`` entry; ``status`` is a JobStatus member (any enum) or its value."""
    limits = limits or Limits()
    try:
        fields = {FIELD_TYPE: JOB_STATUS, **_server_identity(job_id, server_uuid)}
        value = status.value if isinstance(status, enum.Enum) else status
        if not isinstance(value, str) or value not in JOB_STATUSES:
            expected = ", ".join(JOB_STATUSES)
            raise InvalidEvent(f"unknown status {value!r} (expected one of {expected})")
        fields[FIELD_STATUS] = value
        if error_message is not None:
            if not isinstance(error_message, str):
                raise InvalidEvent(
                    f"field 'error_message' must be text, got {type(error_message).__name__}"
                )
            fields[FIELD_ERROR_MESSAGE] = error_message
    except InvalidEvent as error:
        raise _context(JOB_STATUS, error) from None
    return _finish(fields, limits, sent_at)


def _server_identity(job_id: Any, server_uuid: Any) -> dict[str, str]:
    identity: dict[str, str] = {}
    checked_job = _optional_text(job_id, FIELD_JOB_ID)
    if checked_job is not None:
        identity[FIELD_JOB_ID] = checked_job
    checked_server = _optional_text(server_uuid, FIELD_SERVER_UUID)
    if checked_server is not None:
        identity[FIELD_SERVER_UUID] = checked_server
    if not identity:
        raise InvalidEvent("missing field 'job_id' or 'server_uuid' (one is required)")
    return identity


def heartbeat_fields(
    host_type: str,
    *,
    job_id: str | None = None,
    server_uuid: str | None = None,
    client_uuid: str | None = None,
    limits: LimitsLike | None = None,
    sent_at: str | None = None,
) -> dict[str, str]:
    """A ``host.heartbeat`` entry: "this host is alive", named like its metrics events (a
    server by ``job_id`` and/or ``server_uuid``; a client by ``client_uuid``, ``job_id``
    when it knows it). It never changes metrics; the worker records its time."""
    limits = limits or Limits()
    try:
        if host_type not in HOST_TYPES:
            raise InvalidEvent(f"field 'host_type' must be 'server' or 'client', got {host_type!r}")
        fields = {FIELD_TYPE: HOST_HEARTBEAT, FIELD_HOST_TYPE: host_type}
        if host_type == "server":
            fields.update(_server_identity(job_id, server_uuid))
        else:
            checked_job = _optional_text(job_id, FIELD_JOB_ID)
            if checked_job is not None:
                fields[FIELD_JOB_ID] = checked_job
            checked_client = _optional_text(client_uuid, FIELD_CLIENT_UUID)
            if checked_client is None:
                raise InvalidEvent(
                    "missing field 'client_uuid' (required for a client's heartbeat)"
                )
            fields[FIELD_CLIENT_UUID] = checked_client
    except InvalidEvent as error:
        raise _context(HOST_HEARTBEAT, error) from None
    return _finish(fields, limits, sent_at)
