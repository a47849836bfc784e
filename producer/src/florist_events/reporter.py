"""StreamMetricsReporter: an FL4Health reporter that publishes its snapshot as stream events.

A drop-in for FLorist's ``RedisMetricsReporter``::

    StreamMetricsReporter(host=redis_host, port=redis_port, run_id=server_or_client_uuid)

keeps the same snapshot, publishes it as a ``server.metrics`` event (``server_uuid`` =
``run_id``) or a ``client.metrics`` event (``client_uuid`` = ``run_id``), and, in the same
MULTI/EXEC, keeps FLorist's latest-snapshot key ``<run_id>`` as FLorist's reporter wrote it,
so that FLorist's ``wait_for_metric`` and ``check_status`` keep working.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final, Literal

from florist_events.jsontext import dumps_compatible, dumps_strict, jsonable, key_text
from florist_events.publisher import DEFAULT_PUBLISH_TIMEOUT_S, EventPublisher
from florist_events.urls import describe_error
from florist_events.wire import (
    DEFAULT_MAXLEN,
    InvalidEvent,
    LimitsLike,
    client_metrics_fields,
    heartbeat_fields,
    server_metrics_fields,
)

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL_S", "HostType", "StreamMetricsReporter"]

DEFAULT_HEARTBEAT_INTERVAL_S: Final = 30.0

HostType = Literal["server", "client"]
HOST_TYPES: Final = ("server", "client")

logger = logging.getLogger("florist_events.reporter")

_HINTS: Final = {
    "metrics_held_without_host_type": "pass host_type= or report a snapshot with host_type",
    "metrics_held_without_identity": "pass job_id= or run_id=",
    "metrics_held_without_client_uuid": "pass client_uuid= (or run_id=) or call initialize(id=...)",
}


def _log(level: int, event: str, /, **fields: Any) -> None:
    """One log line ``event key=value ...``; the record carries ``event`` and ``fields``."""
    exc_info = fields.pop("exc_info", None)
    detail = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.log(
        level,
        "%s %s" if detail else "%s%s",
        event,
        detail,
        exc_info=exc_info,
        extra={"event": event, "fields": fields},
    )


def _own_publisher(
    host: str | None,
    port: str | int | None,
    url: str | None,
    *,
    db: int,
    username: str | None,
    password: str | None,
    sentinel_password: str | None,
    stream: str | None,
    maxlen: int | None,
    timeout_s: float,
    limits: LimitsLike | None,
    cluster: bool,
) -> EventPublisher:
    """FLorist's form: the reporter's own publisher, on ``host`` and ``port`` or on ``url``."""
    if url is not None:
        if host is not None or port is not None or username or password or db:
            raise ValueError("pass url= alone: its user, password and database are in it")
        return EventPublisher.from_url(
            url,
            stream,
            maxlen,
            timeout_s=timeout_s,
            limits=limits,
            cluster=cluster,
            sentinel_password=sentinel_password,
        )
    if host is None or port is None:
        raise ValueError("pass host= and port= (as to FLorist's reporter), url=, or a publisher")
    if sentinel_password is not None:
        raise ValueError("sentinel_password goes with a redis+sentinel:// url=")
    return EventPublisher.from_host(
        host,
        port,
        db=db,
        username=username,
        password=password,
        stream=stream,
        maxlen=maxlen,
        timeout_s=timeout_s,
        limits=limits,
        cluster=cluster,
    )


def _optional_name(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be non-empty text")
    return value


class StreamMetricsReporter:
    """FL4Health reporter (``initialize`` / ``report`` / ``shutdown``) publishing to the stream.

    **Two ways to make one.**

    - FLorist's: ``StreamMetricsReporter(host=..., port=..., run_id=...)``, exactly the
      arguments of FLorist's ``RedisMetricsReporter``, or ``url=`` in place of ``host`` and
      ``port`` (a ``redis+sentinel://`` URL behind Sentinel, with ``sentinel_password`` if
      the sentinels need one). It connects to that Redis (lazily,
      with ``timeout_s`` timeouts, no retries; ``username``/``password`` for an ACL user),
      publishes by uuid (a server's events carry ``server_uuid=run_id``, a client's
      ``client_uuid=run_id``, no ``job_id`` unless ``job_id=`` is given) and keeps FLorist's
      key ``<run_id>`` (``snapshot_key=True``). As in FLorist, a ``run_id`` of None is taken
      from ``initialize(id=...)``, or is a new uuid4 when that gives none.
    - This project's: ``StreamMetricsReporter(publisher, job_id, host_type=..., client_uuid=...)``
      on an :class:`EventPublisher`, publishing by ``job_id`` (no key unless
      ``snapshot_key=True``). A client's uuid comes from ``client_uuid`` or, when not
      given, from ``initialize(id=...)``; until one is known its snapshot is held.

    **Server or client.** ``host_type`` says it; when not given it is taken from the
    snapshot's own ``host_type`` (FL4Health servers and clients report it first). Until it
    is known, only the key is written.

    **The snapshot** is kept the way FLorist's reporter keeps it: ``round`` None:
    ``metrics.update(data)``; ``round`` given with ``epoch`` and ``step`` None:
    ``metrics["rounds"][str(round)]`` is updated; per-epoch and per-step calls within a round
    change nothing (a call without ``round`` always updates the top level). Values are
    stored as :func:`jsonable` copies (datetimes as ``str``).

    **Publishing.** The whole snapshot is published only when it changed since the last
    publish, inline in ``report()``, with no thread. A failure (Redis down, a timeout,
    anything) is logged, the snapshot kept, and published by a later call or by
    ``shutdown()``; attempts are spaced by ``retry_interval_s``, doubling up to
    ``max_retry_interval_s``, so a training loop pays at most one failed attempt (one
    timeout) per interval. ``shutdown()`` makes up to ``shutdown_attempts`` attempts,
    ``shutdown_retry_wait_s`` apart. A snapshot the worker would refuse (too deep, too
    big) is logged as an error and not retried; the next change is published again. No
    method ever raises into the training loop.

    **Key.** With ``snapshot_key``, the key named by the uuid holds the snapshot as
    FLorist's reporter wrote it (``json.dumps`` text; non-finite numbers as the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``), SET in the same MULTI/EXEC as the XADD.

    **Heartbeats.** Once its identity is known, the reporter publishes a small
    ``host.heartbeat`` event for its host every ``heartbeat_interval_s`` (default 30 s) in
    which nothing else was published, from a daemon thread: the worker's watchdog finishes
    a job whose server stays silent (docs/watchdog.md), and a long round must not look
    like a dead server. The thread never takes the snapshot lock while it talks to Redis
    (a training loop never waits for it), logs failures and goes on (a Redis outage costs
    one failed attempt per interval), stops at ``shutdown()``, and is started again in a
    process that unpickled the reporter. ``heartbeat_interval_s=None`` (or 0) turns it off.

    Thread-safe (one lock, held while publishing, so snapshots reach the stream in order)
    and picklable (the lock and the Redis client are made again after unpickling), so it
    can be handed to a ``multiprocessing.Process`` under the spawn start method.
    """

    def __init__(
        self,
        host: str | EventPublisher | None = None,
        port: str | int | None = None,
        run_id: str | None = None,
        *,
        publisher: EventPublisher | None = None,
        job_id: str | None = None,
        host_type: HostType | None = None,
        client_uuid: str | None = None,
        snapshot_key: bool | None = None,
        stream: str | None = None,
        maxlen: int | None = DEFAULT_MAXLEN,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        limits: LimitsLike | None = None,
        cluster: bool = False,
        retry_interval_s: float = 1.0,
        max_retry_interval_s: float = 30.0,
        shutdown_attempts: int = 3,
        shutdown_retry_wait_s: float = 0.5,
        heartbeat_interval_s: float | None = DEFAULT_HEARTBEAT_INTERVAL_S,
        url: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        if isinstance(host, EventPublisher):  # this project's form: (publisher, job_id)
            if publisher is not None:
                raise ValueError("pass the publisher once")
            publisher, host = host, None
            if port is not None:
                if job_id is not None:
                    raise ValueError("pass job_id once")
                job_id, port = port, None  # type: ignore[assignment]
        if host_type is not None and host_type not in HOST_TYPES:
            raise ValueError(f"host_type must be 'server' or 'client', got {host_type!r}")
        job_id = _optional_name(job_id, "job_id")
        run_id = _optional_name(run_id, "run_id")
        client_uuid = _optional_name(client_uuid, "client_uuid")
        if client_uuid is not None:
            if host_type == "server":
                raise ValueError("client_uuid is only for host_type='client'")
            if run_id is not None and run_id != client_uuid:
                raise ValueError("client_uuid and run_id name the same uuid: pass one")
            run_id, host_type = client_uuid, "client"
        if retry_interval_s < 0 or max_retry_interval_s < 0:
            raise ValueError("retry_interval_s and max_retry_interval_s must not be negative")
        if shutdown_attempts < 1 or shutdown_retry_wait_s < 0:
            raise ValueError("need shutdown_attempts >= 1 and shutdown_retry_wait_s >= 0")
        if heartbeat_interval_s is not None and not heartbeat_interval_s >= 0:
            raise ValueError("heartbeat_interval_s must be a number of seconds >= 0, or None")

        self.florist_form = publisher is None
        if publisher is None:
            publisher = _own_publisher(
                host,
                port,
                url,
                db=db,
                username=username,
                password=password,
                sentinel_password=sentinel_password,
                stream=stream,
                maxlen=maxlen,
                timeout_s=timeout_s,
                limits=limits,
                cluster=cluster,
            )
        else:
            if host is not None or port is not None:
                raise ValueError("pass either a publisher or host= and port=, not both")
            if stream is not None or username is not None or password is not None or cluster:
                raise ValueError("stream, username, password and cluster belong to the publisher")
            if url is not None or sentinel_password is not None:
                raise ValueError("url and sentinel_password belong to the publisher")
        self.host = host
        self.port = port
        self.publisher = publisher
        self.limits: LimitsLike = limits or publisher.limits
        self.job_id = job_id
        self.run_id = run_id
        self.declared_host_type: HostType | None = host_type
        self.snapshot_key = self.florist_form if snapshot_key is None else bool(snapshot_key)
        self.retry_interval_s = retry_interval_s
        self.max_retry_interval_s = max(max_retry_interval_s, retry_interval_s)
        self.shutdown_attempts = shutdown_attempts
        self.shutdown_retry_wait_s = shutdown_retry_wait_s
        self.initialized = False
        self.metrics: dict[str, Any] = {}
        self.initialize_kwargs: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._current_text = dumps_strict(self.metrics)  # the snapshot, encoded
        self._settled_text = self._current_text  # last one published (or refused)
        self._key_text = self._current_text  # last one written to the key alone
        self._failures = 0
        self._next_attempt = 0.0
        self._warned: set[str] = set()
        self.heartbeat_interval_s = heartbeat_interval_s or None
        self.heartbeats_sent = 0
        self._closed = False  # shutdown() was called: no more heartbeats
        self._last_publish = time.monotonic()  # of anything, by this reporter
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    # --- who is reporting --------------------------------------------------------------

    @property
    def host_type(self) -> HostType | None:
        """``server`` or ``client``: as declared, else as the snapshot says (None until then)."""
        if self.declared_host_type is not None:
            return self.declared_host_type
        reported = self.metrics.get("host_type")
        return reported if reported in HOST_TYPES else None

    @property
    def client_uuid(self) -> str | None:
        """The uuid a client reports under (None for a server)."""
        return self.run_id if self.host_type == "client" else None

    @property
    def pending(self) -> bool:
        """True while the current snapshot has not been published yet."""
        with self._lock:
            return self._current_text != self._settled_text

    # --- the reporter interface --------------------------------------------------------

    def initialize(self, **kwargs: Any) -> None:
        """Called by FL4Health with ``id=<server or client name>``; never raises."""
        try:
            with self._lock:
                self.initialize_kwargs.update(kwargs)
                self._take_run_id(kwargs.get("id"))
                self.initialized = True
                self._flush(force=False)
                self._start_heartbeats()
        except Exception:  # noqa: BLE001 - never raise into the training loop
            _log(logging.ERROR, "reporter_initialize_failed", exc_info=True)

    def report(
        self,
        data: dict[str, Any],
        round: int | None = None,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        """Fold ``data`` into the snapshot and publish it if it changed; never raises."""
        try:
            with self._lock:
                if not self.initialized and self.florist_form:
                    self.initialize()  # as FLorist's reporter does
                if round is None:
                    self._update(self.metrics, data)
                elif epoch is None and step is None:
                    rounds = self.metrics.get("rounds")
                    if not isinstance(rounds, dict):
                        rounds = self.metrics["rounds"] = {}
                    key = key_text(round)
                    target = rounds.get(key)
                    if not isinstance(target, dict):
                        target = rounds[key] = {}
                    self._update(target, data)
                self._flush(force=False)
                self._start_heartbeats()
        except Exception:  # noqa: BLE001 - never raise into the training loop
            _log(logging.ERROR, "reporter_report_failed", exc_info=True)

    def shutdown(self) -> None:
        """Publish a pending snapshot: up to ``shutdown_attempts`` tries; stop the
        heartbeats; never raises."""
        self._stop_heartbeats()
        try:
            for attempt in range(self.shutdown_attempts):
                if attempt:
                    time.sleep(self.shutdown_retry_wait_s)
                with self._lock:
                    if self._flush(force=True):
                        return
                    missing = self._missing_identity()
                if missing is not None:  # no retry can help: say so, and do not wait
                    _log(logging.ERROR, "metrics_snapshot_lost", reason=missing)
                    return
            _log(
                logging.ERROR,
                "metrics_snapshot_lost",
                attempts=self.shutdown_attempts,
                run_id=self.run_id,
                job_id=self.job_id,
            )
        except Exception:  # noqa: BLE001 - never raise into the training loop
            _log(logging.ERROR, "reporter_shutdown_failed", exc_info=True)

    # --- equality (as FLorist's later reporter: same host, port and run_id) --------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamMetricsReporter):
            return NotImplemented
        if not (self.florist_form and other.florist_form):
            return self is other
        return (self.host, self.port, self.run_id) == (other.host, other.port, other.run_id)

    def __hash__(self) -> int:
        if not self.florist_form:
            return id(self)
        return hash((str(self.host), str(self.port), str(self.run_id)))

    # --- pickling ---------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        del state["_heartbeat_stop"]
        state["_heartbeat_thread"] = None  # threads stay behind; started again when used
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._heartbeat_stop = threading.Event()
        self._last_publish = time.monotonic()
        self._failures = 0
        self._next_attempt = 0.0  # a monotonic time of another process means nothing here

    # --- internals --------------------------------------------------------------------

    def _take_run_id(self, identifier: Any) -> None:
        if self.run_id is not None:
            return
        if self.florist_form:
            # FLorist's rule: the id FL4Health passes, else a new uuid.
            self.run_id = str(identifier) if identifier else str(uuid.uuid4())
        elif identifier and self.declared_host_type != "server":
            self.run_id = str(identifier)  # a client's uuid, when it was not given

    def _update(self, target: dict[str, Any], data: Any) -> None:
        if not isinstance(data, Mapping):
            _log(logging.WARNING, "report_data_not_a_dict", data_type=type(data).__name__)
            return
        target.update(jsonable(data))
        self._current_text = dumps_strict(self.metrics)

    def _missing_identity(self) -> str | None:
        """Why no event can be made yet (the log event's name), or None when one can."""
        host_type = self.host_type
        if host_type is None:
            return "metrics_held_without_host_type"
        if host_type == "server" and self.job_id is None and self.run_id is None:
            return "metrics_held_without_identity"
        if host_type == "client" and self.run_id is None:
            return "metrics_held_without_client_uuid"
        return None

    def _entry(self) -> dict[str, str] | None:
        """The entry for the current snapshot, or None while the reporter's identity is unknown."""
        missing = self._missing_identity()
        if missing is not None:
            if missing not in self._warned:
                self._warned.add(missing)
                _log(logging.WARNING, missing, hint=_HINTS[missing])
            return None
        limits = self.limits
        if self.host_type == "server":
            return server_metrics_fields(
                self.metrics, job_id=self.job_id, server_uuid=self.run_id, limits=limits
            )
        return client_metrics_fields(
            self.metrics, client_uuid=self.run_id or "", job_id=self.job_id, limits=limits
        )

    def _flush(self, *, force: bool) -> bool:
        """Publish the snapshot if pending; True when nothing is left to publish."""
        text = self._current_text
        if text == self._settled_text:
            return True
        key = self.run_id if self.snapshot_key else None
        if not force and time.monotonic() < self._next_attempt:
            return False
        try:
            fields = self._entry()
        except InvalidEvent as error:
            self._settled_text = text
            _log(logging.ERROR, "metrics_snapshot_refused", error=error.message)
            return True
        if fields is None and (key is None or text == self._key_text):
            return False
        try:
            set_keys = {key: dumps_compatible(self.metrics)} if key is not None else None
            if fields is not None:
                entry_id: str | None = self.publisher.publish_fields(fields, set_keys=set_keys)
            else:
                self.publisher.set_keys(set_keys or {})
                self._key_text = text
                entry_id = None
        except Exception as error:  # noqa: BLE001 - Redis down, timeouts, anything
            self._failures += 1
            delay = min(
                self.retry_interval_s * 2 ** min(self._failures - 1, 30),
                self.max_retry_interval_s,
            )
            self._next_attempt = time.monotonic() + delay
            _log(
                logging.WARNING,
                "metrics_publish_failed",
                error=describe_error(error),
                failures=self._failures,
                retry_in_s=delay,
            )
            return False
        if self._failures:
            _log(logging.INFO, "metrics_publish_recovered", failures=self._failures)
        self._failures = 0
        self._next_attempt = 0.0
        if entry_id is None:
            return False  # only the key: the stream still waits for the identity
        self._settled_text = self._key_text = text
        self._last_publish = time.monotonic()
        _log(logging.DEBUG, "metrics_published", entry_id=entry_id)
        return True

    # --- heartbeats -------------------------------------------------------------------

    def _start_heartbeats(self) -> None:
        """Start the heartbeat thread once the reporter can name its host (lock held)."""
        if self.heartbeat_interval_s is None or self._closed:
            return
        if self._heartbeat_thread is not None and self._heartbeat_thread.is_alive():
            return
        if self._missing_identity() is not None:
            return
        thread = threading.Thread(
            target=self._heartbeat_loop,
            name=f"florist-events-heartbeat-{self.run_id or self.job_id}",
            daemon=True,
        )
        self._heartbeat_thread = thread
        thread.start()

    def _stop_heartbeats(self) -> None:
        self._closed = True
        self._heartbeat_stop.set()
        thread = self._heartbeat_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._heartbeat_thread = None

    def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval_s or DEFAULT_HEARTBEAT_INTERVAL_S
        stop = self._heartbeat_stop
        wait = interval
        while not stop.wait(wait):
            try:
                wait = self._beat(interval)
            except Exception:  # noqa: BLE001 - a heartbeat must never end the process
                _log(logging.ERROR, "heartbeat_failed", exc_info=True)
                wait = interval

    def _beat(self, interval: float) -> float:
        """Publish a heartbeat if nothing was published for ``interval``; returns how long
        to wait before the next look."""
        quiet_for = time.monotonic() - self._last_publish
        if quiet_for < interval:
            return max(interval - quiet_for, 0.01)
        with self._lock:  # only to read the identity; Redis is talked to without it
            if self._closed or self._missing_identity() is not None:
                return interval
            host_type = self.host_type or "server"
            if host_type == "server":
                fields = heartbeat_fields(
                    "server", job_id=self.job_id, server_uuid=self.run_id, limits=self.limits
                )
            else:
                fields = heartbeat_fields(
                    "client", job_id=self.job_id, client_uuid=self.run_id, limits=self.limits
                )
        try:
            entry_id = self.publisher.publish_fields(fields)
        except Exception as error:  # noqa: BLE001 - Redis down, timeouts, anything
            _log(
                logging.WARNING,
                "heartbeat_publish_failed",
                error=describe_error(error),
            )
            self._last_publish = time.monotonic()  # the next attempt one interval later
            return interval
        self.heartbeats_sent += 1
        self._last_publish = time.monotonic()
        _log(logging.DEBUG, "heartbeat_published", entry_id=entry_id)
        return interval
