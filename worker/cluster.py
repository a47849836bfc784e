"""Redis Cluster mode (``FLORIST_REDIS_CLUSTER=true``): the client, and the hash-slot rule.

In a cluster, a MULTI/EXEC may only touch keys of one hash slot. The worker writes three
keys together: the events stream (``FLORIST_STREAM``), the dead-letter stream
(``FLORIST_DEAD_STREAM``, by default ``<stream>:dead``) and the requeue records
(``<stream>:requeued``). They share a slot when the stream's name has a **hash tag** (the
part between the first ``{`` and the next ``}``) and the other two inherit it, so
``FLORIST_STREAM={florist}:events`` is all an operator sets. :func:`check_names` refuses, at
start, names that do not share a slot, with one line showing the names to use.

:func:`connect_cluster` gives a client that connects at first use (so a worker can start
during an outage and wait for it, as with one server) and that reports the cluster
client's own topology failures that :mod:`worker.redis_failures` calls outages ("cannot be
connected", "slots not covered") as :class:`ClusterUnavailable`, a
``redis.ConnectionError``: every caller already treats that as an outage. A failover is
such an outage: commands fail while the primary is down, the client re-reads the topology
(MOVED, CLUSTER SLOTS) and the worker carries on against the promoted replica (see
docs/redis-ha.md).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import CrossSlotTransactionError, RedisClusterException
from redis.retry import Retry

from worker.errors import Misconfigured
from worker.redis_failures import is_outage
from worker.requeues import records_key

DEAD_SUFFIX: Final = ":dead"

# The cluster client's own retries on one command, before the worker's backoff takes over
# (and logs the outage): a few quick ones, so a failover shows in the logs as an outage.
COMMAND_RETRIES: Final = 3


class ClusterUnavailable(redis.ConnectionError):
    """The cluster client could not find a node for a command (no node answered, or the
    slots are not all covered while a failover is under way): an outage."""


class NotACluster(Misconfigured):
    """``FLORIST_REDIS_CLUSTER`` does not match what the Redis server is."""


class CrossSlot(Misconfigured):
    """Keys written in one transaction would not share a hash slot."""


# -- names and slots ----------------------------------------------------------------------


def slot(name: str) -> int:
    """The hash slot of a key (CRC16 of its hash tag, or of the whole name, mod 16384)."""
    return int(key_slot(name.encode()))


def hash_tag(name: str) -> str | None:
    """The key's hash tag (``florist`` in ``{florist}:events``), or None if it has none."""
    start = name.find("{")
    if start < 0:
        return None
    end = name.find("}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return name[start + 1 : end]


def default_dead_stream(stream: str) -> str:
    """``<stream>:dead``: the dead-letter stream follows the stream's hash tag."""
    return stream + DEAD_SUFFIX


def tagged(stream: str) -> str:
    """``stream`` with a hash tag: itself when it has one, else its first ``:``-separated
    part in braces (``florist:events`` -> ``{florist}:events``, ``events`` -> ``{events}``)."""
    if hash_tag(stream) is not None:
        return stream
    head, colon, rest = stream.partition(":")
    if not head or "{" in stream or "}" in stream:
        return "{" + stream.replace("{", "").replace("}", "") + "}"
    return "{" + head + "}" + colon + rest


def transaction_keys(stream: str, dead_stream: str) -> dict[str, str]:
    """The keys written together in one MULTI/EXEC, by what sets each name."""
    return {
        "FLORIST_STREAM": stream,
        "FLORIST_DEAD_STREAM": dead_stream,
        "requeue records (<stream>:requeued)": records_key(stream),
    }


def check_names(stream: str, dead_stream: str) -> None:
    """Raise :class:`CrossSlot` unless the stream, the dead-letter stream and the requeue
    records share one hash slot; the message is one line with the names to use."""
    keys = transaction_keys(stream, dead_stream)
    slots = {what: slot(name) for what, name in keys.items()}
    if len(set(slots.values())) == 1:
        return
    shown = ", ".join(f"{what}={keys[what]!r} (slot {number})" for what, number in slots.items())
    good_stream = tagged(stream)
    advice = f"FLORIST_STREAM={good_stream} and FLORIST_DEAD_STREAM unset (it becomes "
    advice += f"{default_dead_stream(good_stream)})"
    if slot(records_key(stream)) == slot(stream) and hash_tag(stream) is not None:
        advice = (
            f"FLORIST_DEAD_STREAM={default_dead_stream(stream)} (or unset), so that it "
            f"shares the stream's hash tag {{{hash_tag(stream)}}}"
        )
    raise CrossSlot(
        "in Redis Cluster mode the keys written in one MULTI/EXEC must share a hash slot, "
        f"and these do not: {shown}; use {advice}"
    )


def is_cluster(client: object, cluster_setting: bool = False) -> bool:
    """Cluster mode: set, or evident from the client (a library user's ``RedisCluster``)."""
    return cluster_setting or isinstance(client, redis.RedisCluster | ClusterClient)


def check_client_names(client: object, stream: str, dead_stream: str, cluster: bool) -> None:
    """:func:`check_names` when ``client`` is (or the setting says it is) a cluster's."""
    if is_cluster(client, cluster):
        check_names(stream, dead_stream)


# -- the client ---------------------------------------------------------------------------


@contextmanager
def translated_errors(url: str = "") -> Iterator[None]:
    """The cluster client's exceptions that are not ``redis.RedisError`` as ones that say
    what to do: topology failures are :class:`ClusterUnavailable` (an outage), a
    cross-slot transaction and a server without cluster mode are misconfiguration."""
    try:
        yield
    except CrossSlotTransactionError as error:
        raise CrossSlot(
            f"Redis Cluster refused a transaction over keys of different slots ({error}): "
            "give FLORIST_STREAM a hash tag, e.g. FLORIST_STREAM={florist}:events"
        ) from error
    except RedisClusterException as error:
        message = str(error)
        if "Cluster mode is not enabled" in message:
            where = f" at {url}" if url else ""
            raise NotACluster(
                f"Redis{where} is not a cluster (cluster mode is not enabled on it): "
                "unset FLORIST_REDIS_CLUSTER (or set it to false)"
            ) from error
        if is_outage(error):
            raise ClusterUnavailable(f"Redis Cluster: {' '.join(message.split())}") from error
        raise


class _Translating:
    """Calls through to ``target`` with :func:`translated_errors` (for a pipeline)."""

    def __init__(self, target: Any, url: str) -> None:
        self._target = target
        self._url = url

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute
        return _translating(attribute, self._url)


def _translating(method: Callable[..., Any], url: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with translated_errors(url):
            return method(*args, **kwargs)

    return call


class ClusterClient:
    """A ``redis.RedisCluster`` made at first use, with its errors translated.

    It answers the commands of ``redis.Redis`` the worker uses (each goes to the node
    that holds its key's slot), ``pipeline()`` (a transaction must keep to one slot) and
    ``close()``. :attr:`cluster` is the underlying client.
    """

    cluster_mode = True  # how the producer library tells a cluster client

    def __init__(self, factory: Callable[[], redis.RedisCluster], url: str = "") -> None:
        self._factory = factory
        self._url = url
        self._client: redis.RedisCluster | None = None
        self._lock = threading.Lock()

    @property
    def cluster(self) -> redis.RedisCluster:
        """The cluster client; making it reads the topology (an outage raises
        :class:`ClusterUnavailable`, and it is tried again at the next use)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    with translated_errors(self._url):
                        self._client = self._factory()
                client = self._client
        return client

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        with translated_errors(self._url):
            pipe = self.cluster.pipeline(transaction=transaction)  # type: ignore[no-untyped-call]
            return _Translating(pipe, self._url)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attribute = getattr(self.cluster, name)
        if not callable(attribute):
            return attribute
        return _translating(attribute, self._url)

    def __repr__(self) -> str:
        return f"ClusterClient({self._url or 'not connected'})"


def cluster_retry() -> Retry:
    """A few quick retries of one command inside the cluster client (each re-reads the
    topology); longer outages are the worker's to wait out, with its own backoff."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), COMMAND_RETRIES)


def connect_cluster(url: str, shown_url: str, **options: Any) -> ClusterClient:
    """A :class:`ClusterClient` on the cluster one of whose nodes is ``url`` (the others are
    discovered); ``options`` go to every node's connection. Raises ``ValueError`` for a
    URL a cluster client cannot use (a database other than 0, a unix socket)."""
    if url.lower().startswith("unix:"):
        raise ValueError("a Redis Cluster is reached over TCP (redis:// or rediss://), not unix://")
    parsed = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    if int(parsed.get("db", 0) or 0) != 0:
        raise ValueError("a Redis Cluster has only database 0: end the URL with /0 or nothing")

    def factory() -> redis.RedisCluster:
        # reinitialize_steps=1: re-read the whole topology at every redirection or
        # connection error, also inside a transaction (redis-py's default of 5 never
        # refreshes it there: a new pipeline counts from 0 and gives up after 3 retries,
        # so a worker settling a batch would keep knocking at the dead primary).
        return redis.RedisCluster.from_url(
            url, retry=cluster_retry(), reinitialize_steps=1, **options
        )

    return ClusterClient(factory, shown_url)
