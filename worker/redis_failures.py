"""How a Redis failure is classified: the one place that decides (docs/redis-ha.md).

Four classes, each with its own consequence:

* **outage**: Redis cannot serve the command now, for reasons that pass without
  touching the entries: the network, a timeout, a server loading its data, a script
  running too long, memory or replicas short for a write, and every answer of a
  failover (a primary demoted under a blocked read, ``READONLY`` from a replica,
  ``MASTERDOWN``, ``CLUSTERDOWN``, ``TRYAGAIN``, ``MOVED``/``ASK`` that did not settle,
  a cluster client that finds no node). Callers wait it out and acknowledge nothing.
* **group missing**: the stream or its consumer group is gone (``NOGROUP``, a stream
  deleted under a blocked read, ``no such key`` from XINFO): the worker recreates the
  group; read-only callers report an empty stream.
* **refusal**: Redis refuses this user (``NOPERM``, ``WRONGPASS``, ``NOAUTH``). At
  start it is misconfiguration (one line, exit 1); once the worker has run, it is waited
  out like an outage (an ACL changed under a running worker, a promoted replica whose
  ACL is not yet loaded) and logged as what it is.
* **misconfigured**: any other answer of Redis (``WRONGTYPE``, an unknown command on a
  Redis too old, a cluster setting that does not match the server): the worker cannot
  go on with this setup, and stops with one line.

It classifies the exception objects redis-py raises as they are: the classes its reply
parser maps error codes to (``ReadOnlyError`` for ``READONLY``, ...), whose message no
longer holds the code, and plain ``ResponseError`` for the other codes, whose message
starts with it (``UNBLOCKED ...``); the cluster client's own ``RedisClusterException``
(by its cause, else its message); and :class:`worker.cluster.ClusterUnavailable`, a
``ConnectionError``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import redis
from florist_events.urls import describe_error
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    ClusterError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from worker.errors import Misconfigured


class RedisFailure(StrEnum):
    OUTAGE = "outage"
    GROUP_MISSING = "group_missing"
    REFUSAL = "refusal"
    MISCONFIGURED = "misconfigured"


# Exception classes redis-py raises for an outage, whatever the message. ConnectionError
# covers BusyLoadingError (LOADING), MaxClientsReachedError and
# worker.cluster.ClusterUnavailable; ClusterError covers ClusterDownError (CLUSTERDOWN),
# MasterDownError (MASTERDOWN) and "TTL exhausted" (redirected too often); AskError covers
# MovedError.
OUTAGE_TYPES: Final = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,  # a demoted primary, or a replica, asked to write
    ClusterError,
    AskError,  # MOVED and ASK redirections the cluster client did not settle
    TryAgainError,  # a slot being migrated
    OutOfMemoryError,  # maxmemory reached with noeviction: writes wait for room
    SlotNotCoveredError,  # the cluster client knows no node for the slot (a failover)
)

# Classes of refusals of this user; AuthenticationError and AuthorizationError are
# ConnectionErrors in redis-py, so they are looked at first.
REFUSAL_TYPES: Final = (AuthenticationError, AuthorizationError, NoPermissionError)

# Error codes (the first word of a reply) of an outage. Some redis-py versions map some
# of them to the classes above; the others arrive as plain ResponseError.
OUTAGE_CODES: Final = frozenset(
    {
        "UNBLOCKED",  # a blocked XREADGROUP on a primary being demoted (a failover)
        "READONLY",
        "LOADING",
        "MASTERDOWN",  # a replica whose link to its primary is down
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",  # redirections the cluster client did not settle (a failover storm)
        "ASK",
        "BUSY",  # a script or module command running longer than busy-reply-threshold
        "NOREPLICAS",  # min-replicas-to-write not met (replicas reconnecting)
        "MISCONF",  # the server cannot persist (disk full): it refuses writes until fixed
        "OOM",
    }
)
GROUP_MISSING_CODES: Final = frozenset({"NOGROUP"})
REFUSAL_CODES: Final = frozenset({"NOPERM", "WRONGPASS", "NOAUTH"})

# Texts of an outage in replies without such a code: an older server's EXEC on a demoted
# primary, a proxy in front of a managed Redis during its failover.
OUTAGE_TEXTS: Final = ("read-only replica", "read only replica", "failover in progress")

# The stream itself is gone: XINFO's "no such key", a blocked read's "UNBLOCKED the
# stream key no longer exists".
GROUP_MISSING_TEXTS: Final = ("no such key", "no longer exists")

# What the cluster client says when it finds no node for a command (no node answered,
# the slots are not all covered while a replica takes over).
CLUSTER_UNAVAILABLE_TEXTS: Final = (
    "cannot be connected",
    "could not agree",
    "slots are not covered",
    "not covered by the cluster",
)


# How redis-py prefixes the error of one command of a pipeline or MULTI/EXEC (its
# ``Pipeline.annotate_exception``): Redis's own reply follows.
PIPELINE_PREFIX: Final = "Command # "
PIPELINE_REPLY: Final = " of pipeline caused error: "


def _reply(error: BaseException) -> str:
    """Redis's reply as it came, without redis-py's note of the pipeline command."""
    message = str(error)
    if message.startswith(PIPELINE_PREFIX) and PIPELINE_REPLY in message:
        return message.split(PIPELINE_REPLY, 1)[1]
    return message


def _code(message: str) -> str:
    """The reply's error code when the message starts with one, else ''."""
    first = message.split(" ", 1)[0]
    return first if first.isupper() and first.isalpha() else ""


def _from_text(message: str) -> RedisFailure | None:
    text = message.lower()
    if any(phrase in text for phrase in OUTAGE_TEXTS):
        return RedisFailure.OUTAGE
    if any(phrase in text for phrase in GROUP_MISSING_TEXTS):
        return RedisFailure.GROUP_MISSING
    return None


def _cluster_client_failure(error: RedisClusterException) -> RedisFailure:
    """The cluster client's own exceptions: by their cause, else by their message."""
    cause = error.__cause__
    if cause is not None and cause is not error:
        failure = classify(cause)
        if failure is not None:
            return failure
    text = str(error).lower()
    if any(phrase in text for phrase in CLUSTER_UNAVAILABLE_TEXTS):
        return RedisFailure.OUTAGE
    return RedisFailure.MISCONFIGURED  # a cross-slot transaction, cluster mode off, ...


def classify(error: BaseException) -> RedisFailure | None:
    """The class of a failure raised by redis-py; ``None`` if it is not redis-py's."""
    if isinstance(error, AuthenticationWrongNumberOfArgsError):
        return RedisFailure.MISCONFIGURED  # AUTH with a user on a Redis without ACLs
    if isinstance(error, REFUSAL_TYPES):
        return RedisFailure.REFUSAL
    if isinstance(error, OUTAGE_TYPES):
        return RedisFailure.OUTAGE
    if isinstance(error, RedisClusterException):
        return _cluster_client_failure(error)
    if not isinstance(error, redis.RedisError):
        return None
    message = _reply(error)
    code = _code(message)
    if code == "UNBLOCKED" and "no longer exists" in message:
        return RedisFailure.GROUP_MISSING
    if code in OUTAGE_CODES:
        return RedisFailure.OUTAGE
    if code in GROUP_MISSING_CODES:
        return RedisFailure.GROUP_MISSING
    if code in REFUSAL_CODES:
        return RedisFailure.REFUSAL
    return _from_text(message) or RedisFailure.MISCONFIGURED


def is_outage(error: BaseException) -> bool:
    return classify(error) is RedisFailure.OUTAGE


def is_group_missing(error: BaseException) -> bool:
    return classify(error) is RedisFailure.GROUP_MISSING


def describe(error: BaseException) -> str:
    """One line for logs and messages: the type and Redis's message (the producer's rule,
    :func:`florist_events.urls.describe_error`)."""
    return describe_error(error)


def command_line(error: BaseException, where: str) -> str:
    """The one line a command (stats, dlq, emit, replay) prints for a Redis error it
    cannot go on from, worded by its class; ``where`` names the Redis (a redacted URL)."""
    failure = classify(error)
    if failure is RedisFailure.REFUSAL:
        return (
            f"Redis {where} refused the user ({describe(error)}): check the user and password "
            "in FLORIST_REDIS_URL and that user's ACL (deploy/redis-acl.conf)"
        )
    if failure is RedisFailure.OUTAGE:
        return f"Redis {where} did not answer: {describe(error)}"
    return f"Redis {where}: {describe(error)}"


def misconfigured(error: BaseException) -> Misconfigured:
    """The one-line :class:`Misconfigured` for a refusal at start or a misconfiguration,
    naming what to change."""
    if classify(error) is RedisFailure.REFUSAL:
        hint = (
            "check the user and password in FLORIST_REDIS_URL and that user's ACL "
            "(the worker's commands and keys: deploy/redis-acl.conf)"
        )
        return Misconfigured(f"Redis refused the worker's user ({describe(error)}): {hint}")
    return Misconfigured(f"Redis answered an error the worker cannot go on from: {describe(error)}")
