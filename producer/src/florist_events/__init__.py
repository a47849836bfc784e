"""florist-events: publish FLorist training events to the Redis stream the worker consumes.

Installs where FLorist and FL4Health run (Python 3.10 and later, no dependency but
``redis``) and holds the wire format (:mod:`florist_events.wire`), strict JSON text
(:mod:`florist_events.jsontext`), :class:`EventPublisher` and the drop-in reporter
:class:`StreamMetricsReporter`.
"""

from florist_events.jsontext import (
    dumps_compatible,
    dumps_strict,
    jsonable,
    nesting_depth,
    replace_non_finite,
)
from florist_events.publisher import DEFAULT_PUBLISH_TIMEOUT_S, EventPublisher
from florist_events.reporter import StreamMetricsReporter
from florist_events.wire import (
    CLIENT_METRICS,
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_MAX_METRICS_DEPTH,
    DEFAULT_MAXLEN,
    DEFAULT_STREAM,
    EVENT_TYPES,
    FIELD_CLIENT_UUID,
    FIELD_ERROR_MESSAGE,
    FIELD_HOST_TYPE,
    FIELD_JOB_ID,
    FIELD_METRICS,
    FIELD_ORIGIN_ID,
    FIELD_SENT_AT,
    FIELD_SERVER_UUID,
    FIELD_STATUS,
    FIELD_TYPE,
    FIELD_VERSION,
    HOST_HEARTBEAT,
    HOST_TYPES,
    JOB_STATUS,
    JOB_STATUSES,
    SCHEMA_VERSION,
    SERVER_METRICS,
    STREAM_ENV,
    InvalidEvent,
    Limits,
    check_entry,
    client_metrics_fields,
    heartbeat_fields,
    server_metrics_fields,
    status_fields,
    stream_from_env,
)

__version__ = "0.1.0"

__all__ = [
    "CLIENT_METRICS",
    "DEFAULT_MAXLEN",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_METRICS_DEPTH",
    "DEFAULT_PUBLISH_TIMEOUT_S",
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
    "SCHEMA_VERSION",
    "SERVER_METRICS",
    "STREAM_ENV",
    "EventPublisher",
    "InvalidEvent",
    "Limits",
    "StreamMetricsReporter",
    "check_entry",
    "client_metrics_fields",
    "dumps_compatible",
    "dumps_strict",
    "heartbeat_fields",
    "jsonable",
    "nesting_depth",
    "replace_non_finite",
    "server_metrics_fields",
    "status_fields",
    "stream_from_env",
]
