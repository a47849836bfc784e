"""Opening Redis and MongoDB from settings, the same way for every command."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from pymongo import MongoClient
from pymongo.database import Database

from worker.settings import Settings

log = structlog.get_logger(__name__)

MEMORY_URI = "memory://"


def connect_redis(settings: Settings) -> redis.Redis:
    """A client whose socket timeout stays above the blocking read's BLOCK time."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
        client_name=f"florist-worker:{settings.consumer}",
    )


def connect_database(settings: Settings) -> Database[Any]:
    """The configured database; ``memory://`` gives an in-process one that keeps nothing."""
    if settings.mongodb_uri.startswith(MEMORY_URI):
        try:
            import mongomock_ng  # optional extra: imported only when asked for
        except ImportError as error:
            raise SystemExit(
                "FLORIST_MONGODB_URI=memory:// needs the in-memory database: "
                "pip install 'florist-worker[memory]'"
            ) from error
        log.warning(
            "using the in-memory MongoDB (memory://): nothing is kept after this process exits"
        )
        memory_database: Database[Any] = mongomock_ng.MongoClient()[settings.mongodb_db]
        return memory_database
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongodb_uri,
        serverSelectionTimeoutMS=5_000,
        appname="florist-worker",
    )
    return client[settings.mongodb_db]
