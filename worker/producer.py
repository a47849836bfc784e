"""Producers' side of the v1 contract: publish events, and report FL metrics as events.

:class:`EventPublisher` writes one validated v1 entry per call (XADD with an approximate
MAXLEN). :class:`StreamMetricsReporter` is a drop-in for FL4Health's reporter interface
(``initialize`` / ``report`` / ``shutdown``) that keeps the metrics snapshot the way
FLorist's Redis reporter does and publishes it as ``server.metrics`` / ``client.metrics``
events, without importing fl4health and without ever raising into the training loop.

Give the publisher's Redis client short timeouts and no automatic retries (see
:meth:`EventPublisher.from_url`): redis-py's default client waits 5 s per socket operation
and retries 10 times, which would stall a training loop while Redis is down.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.entities import JobStatus
from worker.events import (
    CLIENT_METRICS,
    JOB_STATUS,
    SCHEMA_VERSION,
    SERVER_METRICS,
    Event,
    InvalidEntry,
    Limits,
    parse_entry,
    to_fields,
)
from worker.jsontext import dumps_strict

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_STREAM",
    "EventPublisher",
    "InvalidEvent",
    "StreamMetricsReporter",
    "jsonable",
]

DEFAULT_STREAM: Final = "florist:events"
DEFAULT_MAXLEN: Final = 1_000_000
DEFAULT_PUBLISH_TIMEOUT_S: Final = 0.5

_log = structlog.get_logger(__name__)


class InvalidEvent(ValueError):
    """An event that cannot be published as given; raised before anything is written."""


def _utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _entry_id_text(entry_id: Any) -> str:
    if isinstance(entry_id, bytes):
        return entry_id.decode("ascii")
    return str(entry_id)


class EventPublisher:
    """Writes v1 events to the events stream, one XADD each.

    Every entry is added with ``MAXLEN ~ maxlen``: Redis trims whole radix-tree nodes,
    so the stream keeps at least ``maxlen`` entries (a few more, never fewer once that
    many were written). That cap is the replay window: ``florist-worker replay`` can
    only re-apply events still on the stream, and an entry trimmed while still pending
    in the worker's group is counted as ``lost``. Size it for the longest history you
    want to be able to replay. ``maxlen=None`` never trims.

    Each event method builds and validates the event first (the same checks the
    worker applies, with ``limits``), so a bad argument raises :class:`InvalidEvent`
    and nothing is written. Redis errors (``redis.RedisError``) propagate unchanged.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        stream: str = DEFAULT_STREAM,
        maxlen: int | None = DEFAULT_MAXLEN,
        *,
        limits: Limits | None = None,
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError("stream must be a non-empty name")
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int)):
            raise ValueError(f"maxlen must be a positive integer or None, got {maxlen!r}")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer or None, got {maxlen}")
        self.redis = redis_client
        self.stream = stream
        self.maxlen = maxlen
        self.limits = limits or Limits()

    @classmethod
    def from_url(
        cls,
        url: str,
        stream: str = DEFAULT_STREAM,
        maxlen: int | None = DEFAULT_MAXLEN,
        *,
        timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        limits: Limits | None = None,
    ) -> EventPublisher:
        """A publisher on a client made for producers: short timeouts, no retries.

        A publish against an unreachable Redis then fails after at most ``timeout_s``
        (connect or socket timeout) instead of redis-py's default of 5 s times 10 retries.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return cls(client, stream, maxlen, limits=limits)

    def server_metrics(self, job_id: str, metrics: Mapping[str, Any]) -> str:
        """Publish the FL server's whole current snapshot; returns the entry ID."""
        return self._publish_event(
            {"type": SERVER_METRICS, "job_id": job_id, "metrics": _metrics_dict(metrics)}
        )

    def client_metrics(self, job_id: str, client_uuid: str, metrics: Mapping[str, Any]) -> str:
        """Publish one FL client's whole current snapshot; returns the entry ID."""
        return self._publish_event(
            {
                "type": CLIENT_METRICS,
                "job_id": job_id,
                "client_uuid": client_uuid,
                "metrics": _metrics_dict(metrics),
            }
        )

    def status(self, job_id: str, status: JobStatus | str, error_message: str | None = None) -> str:
        """Publish a change of the job's status; returns the entry ID."""
        fields: dict[str, Any] = {
            "type": JOB_STATUS,
            "job_id": job_id,
            "status": status.value if isinstance(status, JobStatus) else status,
        }
        if error_message is not None:
            fields["error_message"] = error_message
        return self._publish_event(fields)

    def publish_fields(self, fields: Mapping[str, str]) -> str:
        """XADD a raw field map as it is (no validation, no ``sent_at``); returns the ID.

        For entries that are already encoded (a requeued dead letter, a test's
        deliberately invalid entry). Trimmed like every other entry.
        """
        if not fields:
            raise InvalidEvent("an entry needs at least one field")
        entry_id = self.redis.xadd(
            self.stream,
            dict(fields),  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
        return _entry_id_text(entry_id)

    def build_fields(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """Validate an event (without ``v``/``sent_at``) and return its wire field map."""
        candidate = {"v": str(SCHEMA_VERSION), **fields, "sent_at": _utc_now_iso()}
        try:
            event: Event = parse_entry(candidate, self.limits)
        except InvalidEntry as error:
            raise InvalidEvent(f"cannot publish {fields.get('type')}: {error.message}") from None
        try:
            encoded = to_fields(event)
        except (TypeError, ValueError) as error:
            raise InvalidEvent(f"cannot publish {event.type}: metrics {error}") from None
        size = sum(len(key.encode()) + len(value.encode()) for key, value in encoded.items())
        if size > self.limits.max_entry_bytes:
            raise InvalidEvent(
                f"cannot publish {event.type}: entry is {size} bytes, "
                f"over the limit of {self.limits.max_entry_bytes}"
            )
        return encoded

    def _publish_event(self, fields: Mapping[str, Any]) -> str:
        return self.publish_fields(self.build_fields(fields))


def _metrics_dict(metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, Mapping):
        raise InvalidEvent(f"metrics must be a dict (a JSON object), got {type(metrics).__name__}")
    for key in metrics:
        if not isinstance(key, str):
            raise InvalidEvent(f"metrics keys must be text, got {key!r} ({type(key).__name__})")
    return dict(metrics)


def jsonable(value: Any) -> Any:
    """A JSON-compatible copy of an FL reporter's value, never raising.

    Datetimes, dates and times become ``str(value)`` (as FLorist's ``DateTimeEncoder``
    writes them), mappings get text keys, tuples and sets become lists, numpy/torch
    scalars and arrays go through ``tolist()``, enums through their value, and anything
    else becomes ``str(value)``. NaN and infinities stay floats: the encoder writes them
    as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return str(value)
    if isinstance(value, Mapping):
        return {_key_text(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            converted = tolist()
        except Exception:  # noqa: BLE001 - a reporter must never fail on odd values
            return str(value)
        if type(converted) is not type(value):
            return jsonable(converted)
    return str(value)


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else str(jsonable(key))


class StreamMetricsReporter:
    """FL4Health reporter that publishes the metrics snapshot as stream events.

    Implements the reporter interface (``initialize(**kwargs)``, ``report(data, round,
    epoch, step)``, ``shutdown()``) without importing fl4health, so it can be passed in
    an FL4Health ``reporters`` list. The snapshot is kept the way FLorist's Redis
    reporter keeps it:

    - ``round`` is None: ``metrics.update(data)``;
    - ``round`` given, ``epoch`` and ``step`` None: ``metrics["rounds"][str(round)]``
      is updated with ``data`` (dicts created as needed);
    - per-epoch and per-step calls within a round (``round`` and ``epoch`` or ``step``
      given) change nothing. As in FLorist, a call without ``round`` always updates the
      top level, whatever ``epoch`` and ``step`` are.

    Values are stored as :func:`jsonable` copies (datetimes as ``str``), so later
    mutation of the caller's dicts does not change the snapshot.

    The whole snapshot is published (``server.metrics``, or ``client.metrics`` with
    ``client_uuid``) only when it changed since the last publish. Publishing happens
    inline in ``report()``, with no background thread: when it fails (Redis down,
    timeouts, any error) the failure is logged, the latest snapshot is kept, and it is
    published by a later ``report()`` call (any call, per-step ones included) or by
    ``shutdown()``. After a failure, attempts are spaced by ``retry_interval_s``,
    doubling up to ``max_retry_interval_s``; so while Redis is down a training loop pays
    at most one failed attempt (one socket timeout of the publisher's client, see
    :meth:`EventPublisher.from_url`) per interval, never a wait per call; a
    ``max_retry_interval_s`` below ``retry_interval_s`` is raised to it. ``shutdown()``
    makes up to ``shutdown_attempts`` final attempts, ``shutdown_retry_wait_s`` apart.

    A snapshot the worker would refuse (nested too deeply, over the size limit) is
    logged as an error and not retried; the next change is published again.

    A client's ``client_uuid`` comes from the constructor or, when not given there,
    from ``initialize(id=...)``; until one is known, the client's snapshot is held (and
    that is logged once, as an error).

    Thread-safe: one lock guards the snapshot, and is held while publishing, so
    snapshots reach the stream in the order they were made.
    """

    def __init__(
        self,
        publisher: EventPublisher,
        job_id: str,
        *,
        host_type: Literal["server", "client"],
        client_uuid: str | None = None,
        retry_interval_s: float = 1.0,
        max_retry_interval_s: float = 30.0,
        shutdown_attempts: int = 3,
        shutdown_retry_wait_s: float = 0.5,
    ) -> None:
        if host_type not in ("server", "client"):
            raise ValueError(f"host_type must be 'server' or 'client', got {host_type!r}")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("job_id must be non-empty text")
        if client_uuid is not None and (not isinstance(client_uuid, str) or not client_uuid):
            raise ValueError("client_uuid must be non-empty text")
        if host_type == "server" and client_uuid is not None:
            raise ValueError("client_uuid is only for host_type='client'")
        if retry_interval_s < 0 or max_retry_interval_s < 0:
            raise ValueError("retry_interval_s and max_retry_interval_s must not be negative")
        if shutdown_attempts < 1 or shutdown_retry_wait_s < 0:
            raise ValueError("need shutdown_attempts >= 1 and shutdown_retry_wait_s >= 0")
        self.publisher = publisher
        self.job_id = job_id
        self.host_type = host_type
        self.client_uuid = client_uuid
        self.retry_interval_s = retry_interval_s
        self.max_retry_interval_s = max(max_retry_interval_s, retry_interval_s)
        self.shutdown_attempts = shutdown_attempts
        self.shutdown_retry_wait_s = shutdown_retry_wait_s
        self.metrics: dict[str, Any] = {}
        self.initialize_kwargs: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._current_text = dumps_strict(self.metrics)  # the snapshot, encoded
        self._settled_text = self._current_text  # last one published (or refused)
        self._failures = 0
        self._next_attempt = 0.0
        self._warned_no_uuid = False
        self._log = _log.bind(job_id=job_id, host_type=host_type)

    @property
    def pending(self) -> bool:
        """True while the current snapshot has not been published yet."""
        with self._lock:
            return self._current_text != self._settled_text

    def initialize(self, **kwargs: Any) -> None:
        """Called by FL4Health with e.g. ``id=<client name>``; never raises."""
        try:
            with self._lock:
                self.initialize_kwargs.update(kwargs)
                identifier = kwargs.get("id")
                if self.host_type == "client" and self.client_uuid is None and identifier:
                    self.client_uuid = str(identifier)
                    self._log = self._log.bind(client_uuid=self.client_uuid)
                self._flush(force=False)
        except Exception:  # noqa: BLE001 - never raise into the training loop
            self._log.exception("reporter_initialize_failed")

    def report(
        self,
        data: dict[str, Any],
        round: int | None = None,  # shadows the builtin: FL4Health names it so
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        """Fold ``data`` into the snapshot and publish it if it changed; never raises."""
        try:
            with self._lock:
                if round is None:
                    self._update(self.metrics, data)
                elif epoch is None and step is None:
                    rounds = self.metrics.get("rounds")
                    if not isinstance(rounds, dict):
                        rounds = self.metrics["rounds"] = {}
                    key = str(round)
                    target = rounds.get(key)
                    if not isinstance(target, dict):
                        target = rounds[key] = {}
                    self._update(target, data)
                self._flush(force=False)
        except Exception:  # noqa: BLE001 - never raise into the training loop
            self._log.exception("reporter_report_failed")

    def shutdown(self) -> None:
        """Publish a pending snapshot: up to ``shutdown_attempts`` tries; never raises."""
        try:
            for attempt in range(self.shutdown_attempts):
                if attempt:
                    time.sleep(self.shutdown_retry_wait_s)
                with self._lock:
                    if self._flush(force=True):
                        return
            self._log.error(
                "metrics_snapshot_lost",
                attempts=self.shutdown_attempts,
                hint="the last snapshot could not be published before shutdown",
            )
        except Exception:  # noqa: BLE001 - never raise into the training loop
            self._log.exception("reporter_shutdown_failed")

    def _update(self, target: dict[str, Any], data: Any) -> None:
        if not isinstance(data, Mapping):
            self._log.warning("report_data_not_a_dict", data_type=type(data).__name__)
            return
        target.update(jsonable(data))
        self._current_text = dumps_strict(self.metrics)

    def _flush(self, *, force: bool) -> bool:
        """Publish the snapshot if pending; True when nothing is left to publish."""
        text = self._current_text
        if text == self._settled_text:
            return True
        if self.host_type == "client" and self.client_uuid is None:
            if not self._warned_no_uuid:
                self._warned_no_uuid = True
                self._log.error(
                    "metrics_held_without_client_uuid",
                    hint="pass client_uuid= or call initialize(id=...)",
                )
            return False
        if not force and time.monotonic() < self._next_attempt:
            return False
        try:
            if self.client_uuid is None:
                entry_id = self.publisher.server_metrics(self.job_id, self.metrics)
            else:
                entry_id = self.publisher.client_metrics(
                    self.job_id, self.client_uuid, self.metrics
                )
        except InvalidEvent as error:
            self._settled_text = text
            self._log.error("metrics_snapshot_refused", error=str(error))
            return True
        except Exception as error:  # noqa: BLE001 - Redis down, timeouts, anything
            self._failures += 1
            delay = min(
                self.retry_interval_s * 2 ** min(self._failures - 1, 30),
                self.max_retry_interval_s,
            )
            self._next_attempt = time.monotonic() + delay
            self._log.warning(
                "metrics_publish_failed",
                error=f"{type(error).__name__}: {error}",
                failures=self._failures,
                retry_in_s=delay,
            )
            return False
        if self._failures:
            self._log.info("metrics_publish_recovered", failures=self._failures)
        self._failures = 0
        self._next_attempt = 0.0
        self._settled_text = text
        self._log.debug("metrics_published", entry_id=entry_id)
        return True
