"""One live worker per consumer name: a presence key with a TTL.

Two workers under one consumer name share one pending list: each takes the other's
entries for its own (it re-reads them at start, retries them as its own), and nothing
says so. ``florist-worker run`` therefore claims its name before it consumes:

* at start, ``SET <key> <holder> NX PX <ttl>``; if the key exists, a live worker holds
  the name and the command ends with one line (exit 1) saying which;
* while it runs, a thread of its own renews the TTL every ``min(heartbeat_interval_s,
  heartbeat_ttl_s / 3)`` (only if the key still names this worker: a script compares
  and renews at once), so a long batch or an outage of MongoDB does not give the name
  away; a key lost with Redis's data is taken again;
* at a clean stop it deletes the key (again only if it names this worker): the name is
  free at once. After a ``kill -9`` nobody deletes it: it expires after
  ``heartbeat_ttl_s`` (45 s by default), the age at which the worker's heartbeat counts
  as stale too.

Should the key name another worker while this one runs (it could only lapse if no renewal
reached Redis for a whole TTL), the holder that finds out stops: the run ends with exit 1.

The key is ``<stream>:consumer:<group>:<consumer>``: it starts with the stream's name, so
it has the stream's hash tag and lives in the stream's slot on a Redis Cluster, and the
worker's ACL user reaches it under ``florist:*`` while the producer's cannot
(deploy/redis-acl.conf).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Final

import redis
import structlog

from worker.errors import Misconfigured
from worker.redis_failures import classify
from worker.retrying import Backoff, Outage, Retrying
from worker.settings import Settings

log = structlog.get_logger(__name__)

# KEYS[1] the presence key, ARGV[1] this worker's holder text, ARGV[2] the TTL in ms.
# 1: the key names this worker (renewed, or taken again after it was lost); 0: another.
RENEW: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# 1: deleted; 0: the key names another worker (or none), left as it is.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ConsumerTaken(Misconfigured):
    """Another live worker holds this consumer name."""


def presence_key(stream: str, group: str, consumer: str) -> str:
    """``<stream>:consumer:<group>:<consumer>``: in the stream's hash slot."""
    return f"{stream}:consumer:{group}:{consumer}"


def holder_text() -> str:
    """What the key says about its holder: ``<hostname> pid <pid> <random>``."""
    return f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(4)}"


class Presence:
    """This worker's hold on its consumer name: :meth:`claim` it, :meth:`start` the
    renewals, and :meth:`stop` them and release the name at the end (whatever happened
    after the claim)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.consumer = settings.consumer
        self.key = presence_key(settings.stream, settings.group, settings.consumer)
        self.holder = holder_text()
        self.ttl_ms = max(1, round(settings.heartbeat_ttl_s * 1000))
        self.interval_s = min(settings.heartbeat_interval_s, settings.heartbeat_ttl_s / 3)
        self.backoff_s = (settings.backoff_initial_s, settings.backoff_max_s)
        self.lost = False  # another worker was found holding the name while this one ran
        self._on_lost: Callable[[], None] = lambda: None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self) -> None:
        """Take the name, or raise :class:`ConsumerTaken` naming its live holder. An
        outage of Redis is waited out (with the worker's backoff), as the consume loop
        would; a stop signal meanwhile ends the process as nothing is in hand yet."""
        retrying = Retrying(Backoff(*self.backoff_s), on_outage=_claim_waits)
        holder = retrying.call(self._take)
        if holder is not None:
            raise ConsumerTaken(
                f"consumer name {self.consumer!r} (FLORIST_CONSUMER) is held by a live worker "
                f"({holder}): give each worker a name of its own, or leave FLORIST_CONSUMER "
                f"unset; a worker that died frees its name within heartbeat_ttl_s "
                f"({self.ttl_ms / 1000:g} s)"
            )

    def _take(self) -> str | None:
        """SET NX: None once this worker holds the name, else the holder's text."""
        while not self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            holder = self.client.get(self.key)
            if holder is not None:  # else it expired between the two: try again
                return holder.decode(errors="replace") if isinstance(holder, bytes) else str(holder)
        return None

    def renew(self) -> bool:
        """Renew the TTL; False if another worker holds the name now."""
        return bool(self.client.eval(RENEW, 1, self.key, self.holder, self.ttl_ms))

    def release(self) -> None:
        """Free the name at once (if this worker still holds it)."""
        self.client.eval(RELEASE, 1, self.key, self.holder)

    def start(self, on_lost: Callable[[], None]) -> None:
        """Renew the TTL in a thread until :meth:`stop`; ``on_lost`` is called should
        another worker hold the name (:attr:`lost` is then true)."""
        self._on_lost = on_lost
        self._thread = threading.Thread(target=self._loop, name="presence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release the name; a Redis that does not answer leaves it to
        expire after the TTL."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            self.release()
        except Exception as error:
            if classify(error) is None:
                raise
            log.warning(
                "consumer name not released: it expires after heartbeat_ttl_s",
                consumer=self.consumer,
                error=str(error),
            )

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                held = self.renew()
            except Exception as error:
                if classify(error) is None:
                    raise
                log.debug("consumer name not renewed", consumer=self.consumer, error=str(error))
                continue
            if not held:
                self.lost = True
                log.error(
                    "another worker holds this consumer name now: stopping",
                    consumer=self.consumer,
                )
                self._on_lost()
                return


def _claim_waits(outage: Outage) -> None:
    if outage.began:
        log.error("redis unreachable: waiting to claim the consumer name", error=str(outage.error))
