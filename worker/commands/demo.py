"""``florist-worker demo``: the whole event path in one process, on embedded defaults.

::

    florist-worker demo                       # local Redis if one answers, else fakeredis
    florist-worker demo --fast                # no pauses between events
    florist-worker demo --fake-redis          # never look for a Redis server
    florist-worker demo --redis-url redis://host:6379/0 --mongodb-uri mongodb://host:27017
    florist-worker demo --redis-url redis://node:6379 --redis-cluster   # a Redis Cluster
    florist-worker demo --kill-server         # the server dies mid-run; the watchdog ends it

Only the flags choose the services: ``FLORIST_REDIS_URL`` and ``FLORIST_MONGODB_URI`` are
ignored, so a demo never writes to configured services unless asked (and
``--kill-server`` ignores ``FLORIST_STALE_AFTER_S`` and ``FLORIST_WATCHDOG_INTERVAL_S``
too: it shortens them for the demo). ``--redis-cluster`` (alone, or ``true``/``false``)
and else ``FLORIST_REDIS_CLUSTER`` say whether the ``--redis-url`` given is a node of a
Redis Cluster; the demo's keys then share one hash tag. Exit codes: 0 when
the job ends FINISHED_SUCCESSFULLY with no dead letters (with ``--kill-server``:
FINISHED_WITH_ERROR with the watchdog's silence message), 1 when it does not or a service
cannot be reached, 2 for bad flags or settings, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import redis
from florist_events.urls import client_from_url
from pydantic import ValidationError
from pymongo.database import Database
from pymongo.errors import PyMongoError
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.cluster import tagged
from worker.commands.options import (
    EXIT_OK,
    Failure,
    UsageError,
    add_settings_flags,
    command,
    describe_validation_error,
    metavar,
)
from worker.connections import MEMORY_URI, connect_database, connect_redis
from worker.demo import (
    DEFAULT_PACE_S,
    KILL_STALE_AFTER_S,
    DemoNames,
    demo_settings,
    kill_settings,
    run_demo,
)
from worker.logs import configure_logging
from worker.mongo_failures import describe as describe_mongodb_error
from worker.settings import Settings, redact_url

LOCAL_REDIS_URL: Final = "redis://localhost:6379/0"
PROBE_TIMEOUT_S: Final = 0.5
EXPLICIT_TIMEOUT_S: Final = 2.0
DEMO_FLAGS: Final = ("redis_url", "mongodb_uri", "mongodb_db")


class SetupError(Exception):
    """A service the demo needs is not there; the message says how to fix it."""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a sample FL job through producers, stream and worker, in one process",
        description="Create the sample job, publish its 3-round run as an FL server and two "
        "clients would (through StreamMetricsReporter), apply it with a Worker, and print "
        "progress and the final document. Uses a stream, group and dead-letter stream of its "
        "own and deletes them at the end. Exits 1 unless the job ends FINISHED_SUCCESSFULLY "
        "with no dead letters (or when a service cannot be reached), 2 for bad flags. With "
        "--kill-server the FL server dies mid-run and the watchdog must finish the job.",
    )
    _add_service_flags(parser)
    _add_run_flags(parser)
    parser.set_defaults(handler=handle)


def _add_service_flags(parser: argparse.ArgumentParser) -> None:
    """Which Redis and MongoDB the demo uses."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--redis-url",
        metavar=metavar("redis_url"),
        help=f"use this Redis (it must answer); default: {LOCAL_REDIS_URL} when it answers "
        f"within {PROBE_TIMEOUT_S} s, else the in-process fakeredis",
    )
    where.add_argument(
        "--fake-redis",
        action="store_true",
        help="use the in-process fakeredis without looking for a Redis server",
    )
    parser.add_argument(
        "--mongodb-uri",
        default=MEMORY_URI,
        metavar=metavar("mongodb_uri"),
        help=f"MongoDB to write the demo job to (default: {MEMORY_URI}, in-memory)",
    )
    parser.add_argument(
        "--mongodb-db",
        default="florist-server",
        metavar=metavar("mongodb_db"),
        help="database name (default: florist-server)",
    )
    add_settings_flags(parser, fields=("redis_cluster",))


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """How the demo runs: the job kept, the pace, the server killed."""
    parser.add_argument(
        "--keep-job",
        action="store_true",
        help="keep the demo job document in a real MongoDB (removed by default)",
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--pace",
        type=float,
        default=DEFAULT_PACE_S,
        metavar="SECONDS",
        help=f"pause between events (default: {DEFAULT_PACE_S})",
    )
    pace.add_argument("--fast", action="store_true", help="no pauses (same as --pace 0)")
    parser.add_argument(
        "--kill-server",
        action="store_true",
        help="the FL server process dies mid-run (stops publishing, no heartbeats, no "
        "fit_end); the worker's watchdog finishes the job as FINISHED_WITH_ERROR, with the "
        f"silence limit shortened to {KILL_STALE_AFTER_S:g} s for the demo. Exits 0 when it "
        "does, 1 otherwise",
    )


@command("demo")
def handle(arguments: argparse.Namespace) -> int:
    configure_logging("warning", "auto")
    pace_s = 0.0 if arguments.fast else arguments.pace
    if pace_s < 0:
        raise UsageError(f"--pace must be 0 or more, got {pace_s}")
    names = DemoNames.fresh()
    settings = settings_of(arguments, names)
    if settings.redis_cluster:
        if not arguments.redis_url:
            raise UsageError("--redis-cluster needs --redis-url (a node of the cluster)")
        names = cluster_names(names)  # one slot: MULTI/EXEC over them is no CROSSSLOT
        settings = settings_of(arguments, names)
    try:
        redis_client, redis_text = open_redis(arguments.redis_url, arguments.fake_redis, settings)
        database, database_text = open_database(settings)
    except SetupError as error:
        raise Failure(str(error)) from None
    print(f"Redis:   {redis_text}", flush=True)
    print(f"MongoDB: {database_text}", flush=True)
    memory = settings.mongodb_uri.startswith(MEMORY_URI)
    try:
        result = run_demo(
            redis_client,
            database,
            names=names,
            settings=settings,
            pace_s=pace_s,
            remove_job=not memory and not arguments.keep_job,
            out=sys.stdout,
            kill_server=arguments.kill_server,
        )
    except (redis.RedisError, PyMongoError) as error:
        raise Failure(
            f"a service failed during the demo: {type(error).__name__}: {error}"
        ) from None
    finally:
        redis_client.close()
    if result.problems:
        raise Failure("demo FAILED: " + "; ".join(result.problems))
    if arguments.kill_server:
        print(
            "demo OK: the FL server died mid-run and the watchdog finished the job as "
            f"FINISHED_WITH_ERROR: {result.error_message}",
            flush=True,
        )
        return EXIT_OK
    print("demo OK: the job finished successfully and no entry was dead-lettered", flush=True)
    return EXIT_OK


def settings_of(arguments: argparse.Namespace, names: DemoNames) -> Settings:
    """The worker's settings for the demo on ``names``. ``FLORIST_REDIS_CLUSTER`` applies
    to a ``--redis-url`` only: the local or in-process Redis the demo finds is no cluster."""
    overrides: dict[str, Any] = {
        "redis_url": arguments.redis_url or LOCAL_REDIS_URL,
        "mongodb_uri": arguments.mongodb_uri,
        "mongodb_db": arguments.mongodb_db,
    }
    if arguments.setting_redis_cluster is not None:
        overrides["redis_cluster"] = arguments.setting_redis_cluster
    elif not arguments.redis_url:
        overrides["redis_cluster"] = False
    make_settings = kill_settings if arguments.kill_server else demo_settings
    try:
        return make_settings(names, **overrides)
    except ValidationError as error:
        described = describe_validation_error(
            error, flags=("redis_cluster",), flags_only=DEMO_FLAGS
        )
        raise UsageError(f"invalid settings: {described}") from None


def cluster_names(names: DemoNames) -> DemoNames:
    """The demo's names with one hash tag (``{florist:demo:<random>}:events``, ...), so its
    stream, dead-letter stream and requeue records share a slot of the cluster."""
    prefix = names.stream.removesuffix(":events")
    tag = tagged(prefix.replace(":", "-"))  # the whole prefix: one slot per demo run
    return DemoNames(f"{tag}:events", f"{tag}:group", f"{tag}:dead", f"{tag}:worker")


def open_redis(
    url: str | None,
    fake: bool,
    settings: Settings,
    *,
    probe_url: str = LOCAL_REDIS_URL,
) -> tuple[redis.Redis, str]:
    """The Redis to use and a line saying which: ``url``, else ``probe_url``, else fakeredis."""
    if fake:
        return _fake_redis("--fake-redis needs fakeredis: pip install fakeredis"), (
            "in-process fakeredis (--fake-redis)"
        )
    if url is not None:
        problem = _ping(url, EXPLICIT_TIMEOUT_S, settings.sentinel_password)
        if problem is not None:
            raise SetupError(f"Redis at {redact_url(url)} (--redis-url) did not answer: {problem}")
        return connect_redis(settings), f"{redact_url(url)} (--redis-url)"
    problem = _ping(probe_url, PROBE_TIMEOUT_S)
    if problem is None:
        return connect_redis(settings.model_copy(update={"redis_url": probe_url})), (
            f"local Redis at {probe_url}"
        )
    client = _fake_redis(
        f"no Redis answered at {probe_url} within {PROBE_TIMEOUT_S} s ({problem}) and "
        "fakeredis is not installed. Either start Redis there (or pass --redis-url URL), or "
        "install fakeredis: pip install fakeredis"
    )
    return client, f"in-process fakeredis (no Redis answered at {probe_url}: {problem})"


def open_database(settings: Settings) -> tuple[Database[Any], str]:
    """The database and a line saying which; a real MongoDB must answer a ping first."""
    database = connect_database(settings)
    if settings.mongodb_uri.startswith(MEMORY_URI):
        return database, f"in-memory ({MEMORY_URI}): nothing is kept after the demo"
    uri = redact_url(settings.mongodb_uri)
    try:
        database.command("ping")
    except PyMongoError as error:
        raise SetupError(
            f"MongoDB at {uri} did not answer: {describe_mongodb_error(error)}"
        ) from None
    return database, f"{uri}, database {settings.mongodb_db}"


def _ping(url: str, timeout_s: float, sentinel_password: str | None = None) -> str | None:
    """None when Redis at ``url`` answers PING within ``timeout_s``, else why not."""
    try:
        client = client_from_url(
            url,
            sentinel_password=sentinel_password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as error:
        return f"bad URL: {error}"
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    return None


def _fake_redis(missing: str) -> redis.Redis:
    try:
        import fakeredis  # test extra only: imported when no Redis is there
    except ImportError:
        raise SetupError(missing) from None
    client: redis.Redis = fakeredis.FakeRedis()
    return client
