"""Opening Redis and MongoDB from settings, the same way for every command.

A URL that cannot be used raises :class:`worker.settings.InvalidSetting` (naming the
setting and its variable, never the password); a MongoDB client that cannot be built
for another reason (the in-memory extra missing, an SRV record that does not resolve)
raises :class:`worker.errors.Misconfigured`. Nothing here waits for a service: with
``FLORIST_REDIS_CLUSTER=true`` the cluster client reads the topology at its first command
(see :mod:`worker.cluster`); with a ``redis+sentinel://`` URL the client asks the sentinels
where the primary is at its first command, and again after every connection error
(see :mod:`florist_events.urls`).
"""

from __future__ import annotations

from typing import Any, cast

import redis
import structlog
from florist_events.urls import client_from_url
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidName, InvalidURI

from worker.cluster import connect_cluster
from worker.errors import Misconfigured
from worker.settings import InvalidSetting, Settings, redact_url

log = structlog.get_logger(__name__)

MEMORY_URI = "memory://"


def connect_redis(settings: Settings) -> redis.Redis:
    """A client whose socket timeout stays above the blocking read's BLOCK time.

    With ``redis_cluster`` it is a :class:`worker.cluster.ClusterClient`: it answers the
    same commands, each sent to the node that holds its key's slot, and follows failovers.
    With a ``redis+sentinel://`` URL it is redis-py's Sentinel-managed client of the
    primary (``FLORIST_REDIS_SENTINEL_PASSWORD`` for the sentinels): a failover is a
    connection error, waited out like any outage, after which it finds the new primary.
    """
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
        "client_name": f"florist-worker:{settings.consumer}",
    }
    try:
        if settings.redis_cluster:
            client = connect_cluster(settings.redis_url, redact_url(settings.redis_url), **options)
            return cast(redis.Redis, client)  # duck-typed: the commands of redis.Redis
        return client_from_url(
            settings.redis_url, sentinel_password=settings.sentinel_password, **options
        )
    except ValueError as error:
        raise InvalidSetting("redis_url", _without(settings.redis_url, error)) from None


def connect_database(settings: Settings) -> Database[Any]:
    """The configured database; ``memory://`` gives an in-process one that keeps nothing."""
    if settings.mongodb_uri.startswith(MEMORY_URI):
        try:
            import mongomock_ng  # optional extra: imported only when asked for
        except ImportError as error:
            raise Misconfigured(
                "FLORIST_MONGODB_URI=memory:// needs the in-memory database: "
                "pip install 'florist-worker[memory]'"
            ) from error
        log.warning(
            "using the in-memory MongoDB (memory://): nothing is kept after this process exits"
        )
        memory_database: Database[Any] = mongomock_ng.MongoClient()[settings.mongodb_db]
        return memory_database
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(
            settings.mongodb_uri,
            serverSelectionTimeoutMS=5_000,
            appname="florist-worker",
        )
    except (InvalidURI, ValueError) as error:
        raise InvalidSetting("mongodb_uri", _without(settings.mongodb_uri, error)) from None
    except ConfigurationError as error:
        uri = redact_url(settings.mongodb_uri)
        raise Misconfigured(
            f"MongoDB at {uri} (FLORIST_MONGODB_URI): {_without(settings.mongodb_uri, error)}"
        ) from None
    try:
        return client[settings.mongodb_db]
    except (InvalidName, ValueError) as error:
        client.close()
        raise InvalidSetting("mongodb_db", str(error)) from None


def _without(url: str, error: Exception) -> str:
    """The error's message with the URL, should it quote it, shown redacted."""
    return str(error).replace(url, redact_url(url))
