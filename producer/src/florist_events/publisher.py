"""EventPublisher: one checked v1 entry per call, XADD with an approximate MAXLEN.

Give the publisher's Redis client short timeouts and no automatic retries
(:meth:`EventPublisher.from_url`, :meth:`EventPublisher.from_host`): redis-py's default
client waits 5 s per socket operation and retries, which would stall a training loop
while Redis is down.

On a Redis Cluster pass ``cluster=True`` (the URL or host is one node; the others are
discovered) and give the stream a hash tag (``{florist}:events``) as the worker needs.
Behind Redis Sentinel give a ``redis+sentinel://`` URL (:mod:`florist_events.urls`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from florist_events.urls import client_from_url, is_sentinel_url
from florist_events.wire import (
    CLIENT_METRICS,
    DEFAULT_MAXLEN,
    FIELD_CLIENT_UUID,
    FIELD_ERROR_MESSAGE,
    FIELD_JOB_ID,
    FIELD_METRICS,
    FIELD_SERVER_UUID,
    FIELD_STATUS,
    FIELD_TYPE,
    JOB_STATUS,
    SERVER_METRICS,
    InvalidEvent,
    Limits,
    LimitsLike,
    client_metrics_fields,
    heartbeat_fields,
    server_metrics_fields,
    status_fields,
    stream_from_env,
)

__all__ = ["DEFAULT_PUBLISH_TIMEOUT_S", "EventPublisher"]

DEFAULT_PUBLISH_TIMEOUT_S: Final = 0.5


def _entry_id_text(entry_id: Any) -> str:
    if isinstance(entry_id, bytes):
        return entry_id.decode("ascii")
    return str(entry_id)


def is_cluster_client(client: Any) -> bool:
    """True for a Redis Cluster client (redis-py's, or one saying ``cluster_mode``)."""
    return isinstance(client, RedisCluster) or getattr(client, "cluster_mode", False) is True


def _producer_client_options(timeout_s: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


class EventPublisher:
    """Writes v1 events to the events stream, one XADD each.

    ``stream`` defaults to ``$FLORIST_STREAM`` when that is set (the worker reads the same
    variable), else ``florist:events``. Every entry is added with ``MAXLEN ~ maxlen``:
    Redis trims whole radix-tree nodes, so the stream keeps at least ``maxlen`` entries.
    That cap is the replay window of ``florist-worker replay``; ``maxlen=None`` never trims.

    Each event method builds and checks the entry first (the checks the worker applies,
    with ``limits``), so a bad argument raises :class:`InvalidEvent` and nothing is
    written. Redis errors (``redis.RedisError``) propagate unchanged.

    A publisher made by :meth:`from_url` or :meth:`from_host` owns its client: it is
    connected lazily, and the publisher pickles (the client is made again after
    unpickling). One given a ready client does not pickle.
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        stream: str | None = None,
        maxlen: int | None = DEFAULT_MAXLEN,
        *,
        limits: LimitsLike | None = None,
    ) -> None:
        stream = stream_from_env(stream)
        if not isinstance(stream, str) or not stream:
            raise ValueError("stream must be a non-empty name")
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int)):
            raise ValueError(f"maxlen must be a positive integer or None, got {maxlen!r}")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer or None, got {maxlen}")
        self._redis = redis_client
        self._recipe: tuple[str, dict[str, Any]] | None = None
        self.stream = stream
        self.maxlen = maxlen
        self.limits: LimitsLike = limits or Limits()

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        stream: str | None = None,
        maxlen: int | None = DEFAULT_MAXLEN,
        *,
        timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        limits: LimitsLike | None = None,
        cluster: bool = False,
        sentinel_password: str | None = None,
    ) -> EventPublisher:
        """A publisher on a client made for producers: short timeouts, no retries.

        A publish against an unreachable Redis then fails after at most ``timeout_s``
        (connect or socket timeout) instead of redis-py's default of seconds per try.
        ``cluster=True`` makes a ``redis.RedisCluster`` client (when first used: it reads
        the cluster's topology then). In a cluster, :meth:`publish_fields` with
        ``set_keys`` needs the keys and the stream in one hash slot.

        A ``redis+sentinel://host:26379,.../<service>/<db>`` URL publishes to the primary
        the sentinels name (:mod:`florist_events.urls`; ``sentinel_password`` when the
        sentinels require one). Each publish asks them again after a failed one, so a
        failover costs the publishes made while no primary answers.
        """
        publisher = cls(None, stream, maxlen, limits=limits)
        options = _producer_client_options(timeout_s)
        if is_sentinel_url(url):
            if cluster:
                raise ValueError(
                    "a redis+sentinel:// URL names a primary that Sentinel watches, not a "
                    "Redis Cluster: pass cluster=False"
                )
            options["sentinel_password"] = sentinel_password
        if cluster:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # a bad URL fails now
            publisher._recipe = ("cluster", {"url": url, **options})
            return publisher
        publisher._recipe = ("url", {"url": url, **options})
        publisher._connect()  # a bad URL fails here, not at the first publish
        return publisher

    @classmethod
    def from_host(
        cls,
        host: str = "localhost",
        port: int | str = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        stream: str | None = None,
        maxlen: int | None = DEFAULT_MAXLEN,
        timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        limits: LimitsLike | None = None,
        cluster: bool = False,
    ) -> EventPublisher:
        """Like :meth:`from_url`, from FLorist's ``redis_host``/``redis_port`` (and an ACL user);
        ``cluster=True``: the host is one node of a Redis Cluster (database 0 only)."""
        try:
            port_number = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"port must be a number, got {port!r}") from None
        publisher = cls(None, stream, maxlen, limits=limits)
        options = {
            "host": host,
            "port": port_number,
            "db": db,
            "username": username,
            "password": password,
            **_producer_client_options(timeout_s),
        }
        if cluster:
            if db:
                raise ValueError("a Redis Cluster has only database 0")
            del options["db"]
        publisher._recipe = ("cluster-host" if cluster else "host", options)
        return publisher

    def _connect(self) -> redis.Redis:
        if self._recipe is None:
            raise RuntimeError("this publisher has no Redis client")
        kind, options = self._recipe
        options = dict(options)
        client: redis.Redis
        if kind == "url":
            client = client_from_url(options.pop("url"), **options)
        elif kind == "cluster":
            options.pop("health_check_interval", None)
            client = redis.RedisCluster.from_url(options.pop("url"), **options)  # type: ignore[assignment]
        elif kind == "cluster-host":
            options.pop("health_check_interval", None)
            client = redis.RedisCluster(**options)  # type: ignore[assignment]
        else:
            client = redis.Redis(**options)
        self._redis = client
        return client

    @property
    def redis(self) -> redis.Redis:
        """The Redis client (made on first use for a publisher that owns it)."""
        if self._redis is None:
            return self._connect()
        return self._redis

    def close(self) -> None:
        """Close the client's connections (a publisher that owns its client makes a new one
        when used again)."""
        if self._redis is not None:
            self._redis.close()
            if self._recipe is not None:
                self._redis = None

    def __getstate__(self) -> dict[str, Any]:
        if self._recipe is None:
            raise TypeError(
                "an EventPublisher given a ready Redis client cannot be pickled; make it "
                "with EventPublisher.from_url or EventPublisher.from_host"
            )
        state = dict(self.__dict__)
        state["_redis"] = None  # sockets and locks stay behind; made again when used
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- events ------------------------------------------------------------------------

    def server_metrics(
        self, job_id: str | None, metrics: Mapping[str, Any], *, server_uuid: str | None = None
    ) -> str:
        """Publish the FL server's whole current snapshot; returns the entry ID.

        Name the job by ``job_id``, by ``server_uuid`` (the worker matches ``Job.server_uuid``),
        or both.
        """
        return self.publish_fields(
            server_metrics_fields(
                metrics, job_id=job_id, server_uuid=server_uuid, limits=self.limits
            )
        )

    def client_metrics(
        self, job_id: str | None, client_uuid: str, metrics: Mapping[str, Any]
    ) -> str:
        """Publish one FL client's whole current snapshot; returns the entry ID.

        ``job_id`` may be None: the worker then finds the job whose ``clients_info`` holds
        ``client_uuid``.
        """
        return self.publish_fields(
            client_metrics_fields(
                metrics, client_uuid=client_uuid, job_id=job_id, limits=self.limits
            )
        )

    def status(
        self,
        job_id: str | None,
        status: Any,
        error_message: str | None = None,
        *,
        server_uuid: str | None = None,
    ) -> str:
        """Publish a change of the job's status (a JobStatus member or its value)."""
        return self.publish_fields(
            status_fields(
                status,
                job_id=job_id,
                server_uuid=server_uuid,
                error_message=error_message,
                limits=self.limits,
            )
        )

    def heartbeat(
        self,
        host_type: str,
        *,
        job_id: str | None = None,
        server_uuid: str | None = None,
        client_uuid: str | None = None,
    ) -> str:
        """Publish a ``host.heartbeat`` for the job's server (``job_id`` and/or
        ``server_uuid``) or one client (``client_uuid``, ``job_id`` when known)."""
        return self.publish_fields(
            heartbeat_fields(
                host_type,
                job_id=job_id,
                server_uuid=server_uuid,
                client_uuid=client_uuid,
                limits=self.limits,
            )
        )

    def build_fields(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """Check an event given as ``{"type": ..., "job_id": ..., "metrics": {...}, ...}``
        (without ``v``/``sent_at``) and return its wire field map."""
        event_type = fields.get(FIELD_TYPE)
        if event_type == SERVER_METRICS:
            return server_metrics_fields(
                fields.get(FIELD_METRICS),  # type: ignore[arg-type]
                job_id=fields.get(FIELD_JOB_ID),
                server_uuid=fields.get(FIELD_SERVER_UUID),
                limits=self.limits,
            )
        if event_type == CLIENT_METRICS:
            return client_metrics_fields(
                fields.get(FIELD_METRICS),  # type: ignore[arg-type]
                client_uuid=fields.get(FIELD_CLIENT_UUID),  # type: ignore[arg-type]
                job_id=fields.get(FIELD_JOB_ID),
                limits=self.limits,
            )
        if event_type == JOB_STATUS:
            return status_fields(
                fields.get(FIELD_STATUS),
                job_id=fields.get(FIELD_JOB_ID),
                server_uuid=fields.get(FIELD_SERVER_UUID),
                error_message=fields.get(FIELD_ERROR_MESSAGE),
                limits=self.limits,
            )
        raise InvalidEvent(f"cannot publish an event of unknown type {event_type!r}")

    def publish_fields(
        self, fields: Mapping[str, str], *, set_keys: Mapping[str, str] | None = None
    ) -> str:
        """XADD a field map as it is (no checks, no ``sent_at``); returns the entry ID.

        For entries already built (by the builders, a requeued dead letter, a test's
        deliberately invalid entry). With ``set_keys``, those keys are SET in the same
        MULTI/EXEC as the XADD: both happen or neither does. On a Redis Cluster the keys
        and the stream are in different slots, which no transaction spans: there each key
        is SET on its own first, then the entry is added (a failure in between leaves a
        key one snapshot ahead of the stream until the next publish).
        """
        if not fields:
            raise InvalidEvent("an entry needs at least one field")
        if not set_keys:
            entry_id = self.redis.xadd(
                self.stream,
                dict(fields),  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
            return _entry_id_text(entry_id)
        if is_cluster_client(self.redis):
            for key, value in set_keys.items():
                self.redis.set(key, value)
            return self.publish_fields(fields)
        pipe = self.redis.pipeline(transaction=True)
        for key, value in set_keys.items():
            pipe.set(key, value)
        pipe.xadd(
            self.stream,
            dict(fields),  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
        replies = pipe.execute()
        return _entry_id_text(replies[-1])

    def set_keys(self, values: Mapping[str, str]) -> None:
        """SET each key (in one MULTI/EXEC when there are several; one by one on a cluster)."""
        if len(values) > 1 and is_cluster_client(self.redis):
            for key, value in values.items():
                self.redis.set(key, value)
            return
        if len(values) == 1:
            [(key, value)] = values.items()
            self.redis.set(key, value)
            return
        pipe = self.redis.pipeline(transaction=True)
        for key, value in values.items():
            pipe.set(key, value)
        pipe.execute()
