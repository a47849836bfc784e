"""The v1 wire format: a stream entry's field map <-> a typed, validated event.

This module is the one place that knows the entry layout (see ``CONTRACT.md``):
flat string fields ``v``, ``type``, ``job_id``, ``client_uuid``, ``metrics`` (JSON
text of an object), ``status``, ``error_message``, ``host_type`` (heartbeats),
``sent_at``, ``origin_id``.
Unknown extra fields are ignored. Every way an entry can be bad raises
:class:`InvalidEntry` with the outcome (``invalid`` or ``unsupported_version``) and a
message a person can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Self

# The wire format's names and limits have one source, shared with the producers.
from florist_events.wire import CLIENT_METRICS as CLIENT_METRICS
from florist_events.wire import DEFAULT_MAX_ENTRY_BYTES as DEFAULT_MAX_ENTRY_BYTES
from florist_events.wire import DEFAULT_MAX_METRICS_DEPTH as DEFAULT_MAX_METRICS_DEPTH
from florist_events.wire import EVENT_TYPES as EVENT_TYPES
from florist_events.wire import HOST_HEARTBEAT as HOST_HEARTBEAT
from florist_events.wire import JOB_STATUS as JOB_STATUS
from florist_events.wire import SCHEMA_VERSION as SCHEMA_VERSION
from florist_events.wire import SERVER_METRICS as SERVER_METRICS
from florist_events.wire import broken_rule, is_newer_version, rule_of
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from worker.entities import JobStatus
from worker.jsontext import dumps_strict, nesting_depth, parse_metrics_text
from worker.positions import InvalidStreamId, StreamPosition

METRICS_TYPES: Final = (SERVER_METRICS, CLIENT_METRICS)

FieldMap = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[Any, Any]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one entry, so a single producer bug cannot exhaust the worker."""

    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    max_metrics_depth: int = DEFAULT_MAX_METRICS_DEPTH


class InvalidEntry(ValueError):
    """An entry that can never be applied as it is: ``outcome`` says how to file it."""

    def __init__(self, outcome: Literal["invalid", "unsupported_version"], message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


NonEmptyText = Annotated[str, StringConstraints(min_length=1)]
# On the wire an optional field is absent, never null: say so in the JSON Schema.
OptionalText = Annotated[str | None, WithJsonSchema({"type": "string"})]
OptionalName = Annotated[NonEmptyText | None, WithJsonSchema({"type": "string", "minLength": 1})]

MetricsObject = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "JSON text of an object: the reporter's whole current snapshot. "
            "NaN and infinities may be written as the strings "
            '"NaN", "Infinity", "-Infinity".',
        }
    ),
]


def _parse_metrics(value: Any, info: ValidationInfo) -> dict[str, Any]:
    """Metrics arrive parsed by :func:`parse_entry`; text is parsed here for callers
    that validate a field map of their own (``to_fields`` round trips, the schema)."""
    limit = (info.context or {}).get("max_metrics_depth", DEFAULT_MAX_METRICS_DEPTH)
    if isinstance(value, dict):
        if (info.context or {}).get("metrics_checked"):
            return value  # parse_entry parsed and measured it already
        if nesting_depth(value, stop_after=limit) > limit:
            raise ValueError(
                f"metrics is nested {nesting_depth(value)} levels deep, over the limit of {limit}"
            )
        return value
    if isinstance(value, str):
        metrics, _text = parse_metrics_text(value, limit)
        return metrics
    raise ValueError(f"metrics must be JSON text, got {type(value).__name__}")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal["1"] = Field(description="schema version")
    job_id: OptionalName = Field(
        default=None,
        description="the Job document's _id; may be left out when a uuid names the job "
        "(server_uuid, or client_uuid for client.metrics)",
    )
    sent_at: OptionalText = Field(default=None, description="producer clock, ISO 8601")
    origin_id: OptionalText = Field(
        default=None,
        description="set only by `florist-worker dlq requeue`: the entry ID the event had "
        "first; honoured only with a matching requeue_token",
    )
    requeue_token: OptionalText = Field(
        default=None,
        description="set only by `florist-worker dlq requeue`: names the operator's record "
        "that vouches for origin_id",
    )

    @field_validator("origin_id")
    @classmethod
    def _origin_is_stream_id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                StreamPosition.parse(value)
            except InvalidStreamId as error:
                raise ValueError(f"origin_id: {error}") from None
        return value

    @property
    def identity(self) -> tuple[str, str]:
        """How the entry names its job: ``("job_id", id)``, or a uuid to resolve."""
        if self.job_id is not None:
            return ("job_id", self.job_id)
        uuid = getattr(self, "server_uuid", None) or getattr(self, "client_uuid", None)
        kind = "server_uuid" if getattr(self, "server_uuid", None) else "client_uuid"
        return (kind, str(uuid))

    def with_job(self, job_id: str) -> Self:
        """The same event, its job resolved (from a uuid) to ``job_id``."""
        return self.model_copy(update={"job_id": job_id})

    def position(self, entry_id: str | bytes) -> StreamPosition:
        """Where this event stands among its target's events: ``origin_id`` first."""
        return StreamPosition.parse(self.origin_id if self.origin_id is not None else entry_id)


class _MetricsEntry(_Entry):
    metrics: MetricsObject
    _stored_text: str | None = PrivateAttr(default=None)

    @property
    def metrics_text(self) -> str:
        """The metrics as stored: strict JSON text, valid UTF-8 that BSON can encode.

        The text as received is kept when it is strict JSON already, which saves
        encoding every snapshot again (see :func:`worker.jsontext.parse_metrics_text`).
        """
        # Read from pydantic's private storage: its attribute lookup is slow.
        private = self.__pydantic_private__
        stored = private.get("_stored_text") if private else None
        if stored is not None:
            return str(stored)
        return dumps_strict(self.metrics)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics_from_json(cls, value: Any, info: ValidationInfo) -> dict[str, Any]:
        return _parse_metrics(value, info)


_NAMED_BY_JOB_OR_SERVER: Final[JsonDict] = {
    "anyOf": [{"required": ["job_id"]}, {"required": ["server_uuid"]}]
}


class _FromServer(_Entry):
    """An event of the FL server: it names its job by ``job_id`` or by its own uuid."""

    model_config = ConfigDict(json_schema_extra=_NAMED_BY_JOB_OR_SERVER)

    server_uuid: OptionalName = Field(
        default=None,
        description="the FL server's uuid (Job.server_uuid): names the job when job_id is absent",
    )

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.job_id is None and self.server_uuid is None:
            kind = getattr(self, "type", "this event")
            raise ValueError(
                f"missing field 'job_id' or 'server_uuid' (one is required for {kind})"
            )
        return self


class ServerMetricsEvent(_MetricsEntry, _FromServer):
    """The FL server's whole current metrics snapshot."""

    type: Literal["server.metrics"]

    @property
    def finishes_job(self) -> bool:
        """A snapshot with ``fit_end`` means the server finished fitting."""
        return "fit_end" in self.metrics


class ClientMetricsEvent(_MetricsEntry):
    """One FL client's whole current metrics snapshot."""

    type: Literal["client.metrics"]
    client_uuid: NonEmptyText = Field(
        description="ClientInfo.uuid of the reporting FL client; names the job too when "
        "job_id is absent"
    )


class JobStatusEvent(_FromServer):
    """A change of the job's status, with an optional reason for an error finish."""

    type: Literal["job.status"]
    status: JobStatus
    error_message: OptionalText = Field(
        default=None, description="why a job finished with an error"
    )


class HeartbeatEvent(_Entry):
    """ "This FL host is alive" (added after v1): records when the worker last heard from
    the job's server or one of its clients, and changes nothing else."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {"host_type": {"const": "server"}},
                    "anyOf": [{"required": ["job_id"]}, {"required": ["server_uuid"]}],
                },
                {"properties": {"host_type": {"const": "client"}}, "required": ["client_uuid"]},
            ]
        }
    )

    type: Literal["host.heartbeat"]
    host_type: Literal["server", "client"] = Field(
        description="whose heartbeat: the job's FL server, or the client named by client_uuid"
    )
    server_uuid: OptionalText = Field(
        default=None,
        description="a server's uuid (Job.server_uuid): names the job when job_id is absent "
        "(ignored for a client)",
    )
    client_uuid: OptionalText = Field(
        default=None,
        description="a client's uuid (ClientInfo.uuid): required for a client; names the job "
        "too when job_id is absent (ignored for a server)",
    )

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.host_type == "server":
            if self.server_uuid == "":
                raise ValueError("field 'server_uuid' must not be empty")
            if self.job_id is None and self.server_uuid is None:
                raise ValueError(
                    "missing field 'job_id' or 'server_uuid' (one is required for a server's "
                    "host.heartbeat)"
                )
        else:
            if self.client_uuid is None:
                raise ValueError("missing field 'client_uuid' (required for a client's heartbeat)")
            if not self.client_uuid:
                raise ValueError("field 'client_uuid' must not be empty")
        return self

    @property
    def identity(self) -> tuple[str, str]:
        if self.job_id is not None:
            return ("job_id", self.job_id)
        if self.host_type == "server":
            return ("server_uuid", str(self.server_uuid))
        return ("client_uuid", str(self.client_uuid))


Event = ServerMetricsEvent | ClientMetricsEvent | JobStatusEvent | HeartbeatEvent

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])


def _decode_fields_slowly(fields: FieldMap) -> tuple[dict[str, Any], int]:
    """Field names and values as text, and the size in bytes, of a map that is not all
    UTF-8 bytes: names the offending field (:func:`parse_entry` does the common case)."""
    decoded: dict[str, Any] = {}
    size = 0
    for raw_key, raw_value in fields.items():
        key = _text(raw_key, "a field name")
        size += len(raw_key) + (len(raw_value) if isinstance(raw_value, bytes | str) else 0)
        decoded[key] = (
            _text(raw_value, f"field {key!r}") if isinstance(raw_value, bytes) else raw_value
        )
    return decoded, size


def _text(raw: Any, what: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEntry("invalid", f"{what} is not UTF-8 text") from None
    raise InvalidEntry("invalid", f"{what} must be text, got {type(raw).__name__}")


def _check_version(fields: dict[str, Any]) -> None:
    if "v" not in fields:
        raise InvalidEntry("invalid", "missing field 'v' (the schema version, '1')")
    version = fields["v"]
    if version == str(SCHEMA_VERSION):
        return
    if is_newer_version(version):  # ASCII digits, any number of them
        raise InvalidEntry(
            "unsupported_version",
            f"schema version {version} is newer than this worker knows ({SCHEMA_VERSION})",
        )
    raise InvalidEntry("invalid", f"field 'v' must be '{SCHEMA_VERSION}', got {version!r}")


def _check_type(fields: dict[str, Any]) -> str:
    if "type" not in fields:
        raise InvalidEntry("invalid", f"missing field 'type' (one of {', '.join(EVENT_TYPES)})")
    event_type = fields["type"]
    if event_type not in EVENT_TYPES:
        raise InvalidEntry(
            "invalid", f"unknown type {event_type!r} (expected one of {', '.join(EVENT_TYPES)})"
        )
    return str(event_type)


def _describe(error: ValidationError, event_type: str) -> str:
    problems = []
    for detail in error.errors(include_url=False):
        location = [part for part in detail["loc"] if part != event_type]
        name = str(location[0]) if location else "entry"
        kind = detail["type"]
        if kind == "missing":
            problems.append(f"missing field {name!r} (required for {event_type})")
        elif name == "status" and kind == "enum":
            expected = ", ".join(JobStatus.list())
            problems.append(f"unknown status {detail['input']!r} (expected one of {expected})")
        elif kind == "value_error":
            problems.append(str(detail["ctx"]["error"]) if "ctx" in detail else detail["msg"])
        elif name == "host_type" and kind == "literal_error":
            problems.append(
                f"field 'host_type' must be 'server' or 'client', got {detail['input']!r}"
            )
        elif kind in {"string_type", "literal_error"}:
            problems.append(f"field {name!r} must be text, got {type(detail['input']).__name__}")
        elif kind == "string_too_short":
            problems.append(f"field {name!r} must not be empty")
        else:
            problems.append(f"field {name!r}: {detail['msg']}")
    return "; ".join(problems)


# -- the fast path ---------------------------------------------------------------------
#
# pydantic's validation, its private-attribute set-up and the collector work its
# containers cause were most of the worker's CPU per entry (bench/README.md, "Profile of
# the read path"). Entries a producer wrote correctly take this path instead: it checks
# the entry against the wire format's rules (``florist_events.wire.RULES``, the table the
# producers check from too) and builds the same model instance as validation would (the
# same ``__dict__`` in field order, fields set, private text), without running
# validation. Anything it is not sure of, valid or not, goes to pydantic, so the models
# stay the one source of every error message and outcome; tests/test_fast_path.py checks
# that both paths agree on arbitrary and near-valid field maps.

_STATUSES: Final[dict[str, JobStatus]] = {member.value: member for member in JobStatus}
_MODELS: Final[dict[str, type[Event]]] = {
    SERVER_METRICS: ServerMetricsEvent,
    CLIENT_METRICS: ClientMetricsEvent,
    JOB_STATUS: JobStatusEvent,
    HOST_HEARTBEAT: HeartbeatEvent,
}
# Each model's fields in declaration order (the order validation fills ``__dict__`` in).
_FIELD_ORDER: Final[dict[type[BaseModel], tuple[str, ...]]] = {
    model: tuple(model.model_fields) for model in _MODELS.values()
}
# Plain sets, never changed: set.intersection returns a set, as __pydantic_fields_set__
# must be (a frozenset's would be a frozenset), and takes less than keys() & fields.
_MODEL_FIELDS: Final[dict[type[BaseModel], set[str]]] = {
    model: set(order) for model, order in _FIELD_ORDER.items()
}
_new: Final = object.__new__
# BaseModel's own slots, set through their descriptors (what model_construct does with
# object.__setattr__, for less).
_set_dict: Final = BaseModel.__dict__["__dict__"].__set__
_set_fields_set: Final = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra: Final = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private: Final = BaseModel.__dict__["__pydantic_private__"].__set__


def _origin_ok(origin_id: str) -> bool:
    try:
        StreamPosition.parse(origin_id)
    except InvalidStreamId:
        return False
    return True


def _fast_event(event_type: str, decoded: dict[str, Any], stored_text: str | None) -> Event | None:
    """The event, if ``decoded`` (every value an exact ``str``, its ``metrics`` parsed) is
    surely valid; ``None`` when pydantic must decide (and word the error, if any).

    The instance is built as pydantic's validation leaves it, the way ``model_construct``
    does without its per-field loop: every field in declaration order, the fields set
    are the model's fields present in ``decoded``, no extra, the stored metrics text.
    """
    get = decoded.get
    rule = rule_of(event_type, get("host_type"))
    if rule is None or broken_rule(rule, decoded) is not None:
        return None
    if rule.metrics and stored_text is None:  # metrics that are not a checked snapshot
        return None
    origin_id = get("origin_id")
    if origin_id is not None and not _origin_ok(origin_id):
        return None
    model = _MODELS[event_type]
    values: dict[str, Any] = {name: get(name) for name in _FIELD_ORDER[model]}
    if model is JobStatusEvent:
        values["status"] = _STATUSES[decoded["status"]]
    event: Event = _new(model)
    _set_dict(event, values)
    _set_fields_set(event, _MODEL_FIELDS[model].intersection(decoded))
    _set_extra(event, None)
    _set_private(event, {"_stored_text": stored_text} if rule.metrics else None)
    return event


_DEFAULT_LIMITS: Final = Limits()
_NAMES: Final = {
    name.encode(): name
    for name in {"type", *(name for model in _MODEL_FIELDS for name in model.model_fields)}
}
_VERSION_TEXT: Final = str(SCHEMA_VERSION)


def parse_entry(fields: FieldMap, limits: Limits | None = None) -> Event:
    """Validate one stream entry's field map and return the typed event.

    Raises :class:`InvalidEntry` naming exactly what is wrong.
    """
    limits = limits or _DEFAULT_LIMITS
    if type(fields) is not dict and not isinstance(fields, Mapping):  # skip the ABC check
        raise InvalidEntry("invalid", f"an entry must be a field map, got {type(fields).__name__}")
    # Field names and values as text, and the entry's size in bytes. The common case
    # (every key and value UTF-8 bytes: then every value is an exact str, the fast
    # path's precondition) is one comprehension; the slow path names a bad field.
    items: Any = fields.items()
    try:
        try:  # the contract's field names map to their text: no key to decode, or free
            decoded: dict[str, Any] = {_NAMES[key]: value.decode() for key, value in items}
        except (KeyError, TypeError):  # a name of its own (or not a name at all)
            items = fields.items()
            decoded = {key.decode(): value.decode() for key, value in items}
    except (AttributeError, UnicodeDecodeError):
        decoded, size = _decode_fields_slowly(fields)
        all_text = False
    else:
        size = sum(map(len, fields.keys())) + sum(map(len, fields.values()))
        all_text = True
    if size > limits.max_entry_bytes:
        raise InvalidEntry(
            "invalid", f"entry is {size} bytes, over the limit of {limits.max_entry_bytes}"
        )
    event_type = decoded.get("type")
    if not (
        decoded.get("v") == _VERSION_TEXT and type(event_type) is str and event_type in EVENT_TYPES
    ):  # the checks' own calls (and their messages) only for an entry that may fail them
        _check_version(decoded)
        event_type = _check_type(decoded)
    stored_text = None
    text = decoded.get("metrics")
    if event_type in METRICS_TYPES and isinstance(text, str):
        try:
            decoded["metrics"], stored_text = parse_metrics_text(text, limits.max_metrics_depth)
        except ValueError as error:
            raise InvalidEntry("invalid", str(error)) from None
    if all_text:
        fast = _fast_event(event_type, decoded, stored_text)
        if fast is not None:
            return fast
    try:
        event = _EVENT_ADAPTER.validate_python(
            decoded,
            context={
                "max_metrics_depth": limits.max_metrics_depth,
                "metrics_checked": stored_text is not None,
            },
        )
    except ValidationError as error:
        raise InvalidEntry("invalid", _describe(error, event_type)) from None
    if isinstance(event, _MetricsEntry):
        # Straight into pydantic's private storage: its __setattr__ costs more than this.
        event.__pydantic_private__["_stored_text"] = stored_text  # type: ignore[index]
    return event


def to_fields(event: Event) -> dict[str, str]:
    """The entry's field map as producers write it: metrics as strict JSON text."""
    fields: dict[str, str] = {"v": event.v, "type": event.type}
    if event.job_id is not None:
        fields["job_id"] = event.job_id
    if isinstance(event, HeartbeatEvent):
        fields["host_type"] = event.host_type
    server_uuid = getattr(event, "server_uuid", None)
    if server_uuid is not None:
        fields["server_uuid"] = server_uuid
    client_uuid = getattr(event, "client_uuid", None)
    if client_uuid is not None:
        fields["client_uuid"] = client_uuid
    if isinstance(event, ServerMetricsEvent | ClientMetricsEvent):
        fields["metrics"] = event.metrics_text
    if isinstance(event, JobStatusEvent):
        fields["status"] = event.status.value
        if event.error_message is not None:
            fields["error_message"] = event.error_message
    if event.sent_at is not None:
        fields["sent_at"] = event.sent_at
    if event.origin_id is not None:
        fields["origin_id"] = event.origin_id
    if event.requeue_token is not None:
        fields["requeue_token"] = event.requeue_token
    return fields


def entry_json_schema() -> dict[str, Any]:
    """JSON Schema of a v1 entry's field map, for producers in other languages."""
    schema = _EVENT_ADAPTER.json_schema(mode="validation")
    schema["title"] = "florist-worker stream entry, v1"
    schema["description"] = (
        "One Redis stream entry: flat string fields. Unknown extra fields are ignored."
    )
    return schema
