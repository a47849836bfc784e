"""The systems under test, each draining a preloaded stream into the same store.

* A, ``worker``: :class:`worker.consumer.Worker`, default settings but stream/group names
  (batched writes: one ``bulk_write`` per batch, where the worker has them);
* A1, ``worker, one update per event``: A with ``batched_writes=False``, today's path;
* B, ``plain``: the reference limit, a bare redis-py loop: XREADGROUP COUNT ``BATCH``, one
  unguarded ``update_one`` per event, one XACK per batch, no validation;
* C, ``faststream``: a FastStream ``StreamSub`` group consumer doing B's update per message;
* D, ``worker-null``: the worker with :class:`worker.store.NullStore`: Redis and validation;
* R, ``read``: the reference of the read path, XREADGROUP COUNT ``BATCH`` + XACK, no store.

Every drain function times only its consuming section and returns what it handled,
so the caller can refuse to report a run that did not handle every event. The
database a system gets may be a :class:`bench.network.DelayedDatabase` (a modelled
network); the worker reports its own round trips (``store.round_trips``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import redis
import redis.asyncio
from pymongo.collection import Collection
from pymongo.database import Database

from worker.connections import connect_redis
from worker.consumer import Worker
from worker.observers import BatchObserver
from worker.settings import Settings
from worker.store import JobStore, NullStore

STREAM: Final = "bench:events"
GROUP: Final = "bench-workers"
# B, C and R read as many entries per call as the worker does by default (its COUNT).
BATCH: Final[int] = int(Settings.model_fields["batch_size"].default)
FINISHED: Final = "FINISHED_SUCCESSFULLY"
DRAIN_TIMEOUT_S: Final = 600.0
# Whether this worker has the switch between batched writes and one update per event.
HAS_BATCHED_SWITCH: Final = "batched_writes" in Settings.model_fields

NAMES: Final = {
    "A": "worker (batched writes)",
    "A1": "worker, one update per event",
    "B": "plain redis-py",
    "C": "FastStream",
    "D": "worker + NullStore",
    "R": "plain read+ack loop",
}
ORDER: Final = tuple(NAMES)
WRITING: Final = frozenset({"A", "A1", "B", "C"})  # the systems that use MongoDB


class BenchFailure(RuntimeError):
    """A system did not do the whole job: its figures would be meaningless."""


@dataclass(frozen=True)
class Target:
    """Where a system reads from: one stream and group on one Redis."""

    redis_url: str
    stream: str = STREAM
    group: str = GROUP
    consumer: str = "bench-consumer-1"


@dataclass(frozen=True)
class Drained:
    """One drain: seconds spent consuming, entries handled, and by outcome if known;
    ``round_trips`` is the worker's own count (``store.round_trips``) when it has one."""

    seconds: float
    handled: int
    counts: dict[str, int] = field(default_factory=dict)
    round_trips: int | None = None


def worker_settings(target: Target, **overrides: Any) -> Settings:
    """Defaults, except where the events are (and any ``overrides`` a caller needs)."""
    return Settings(
        redis_url=target.redis_url,
        stream=target.stream,
        group=target.group,
        dead_stream=f"{target.stream}:dead",
        consumer=target.consumer,
        **overrides,
    )


def create_group(client: redis.Redis, target: Target) -> None:
    """At ID 0 with MKSTREAM, as the contract says; FastStream would create it at ``$``."""
    try:
        client.xgroup_create(target.stream, target.group, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def store_round_trips(store: JobStore) -> int | None:
    """``store.round_trips`` where the store talks to MongoDB (``None`` for NullStore)."""
    return None if isinstance(store, NullStore) else store.round_trips


# -- A, A1 and D: the worker -----------------------------------------------------------


def drain_worker(
    target: Target,
    database: Database[Any] | None,
    expected: int,
    *,
    store: JobStore | None = None,
    observers: tuple[BatchObserver, ...] = (),
    batched: bool = True,
) -> Drained:
    overrides = {} if batched or not HAS_BATCHED_SWITCH else {"batched_writes": False}
    settings = worker_settings(target, **overrides)
    client = connect_redis(settings)
    worker = Worker(client, database, settings, store=store, observers=observers)
    watchdog = threading.Timer(DRAIN_TIMEOUT_S, worker.stop)  # an outage that never ends
    watchdog.start()
    try:
        started = time.perf_counter()
        counts = worker.drain()
        seconds = time.perf_counter() - started
    finally:
        watchdog.cancel()
        client.close()
    if worker.dead_lettered:
        raise BenchFailure(f"worker dead-lettered {worker.dead_lettered} entries")
    return Drained(seconds, sum(counts.values()), counts, store_round_trips(worker.store))


def drain_worker_unbatched(
    target: Target, database: Database[Any] | None, expected: int
) -> Drained:
    return drain_worker(target, database, expected, batched=False)


def drain_worker_null(target: Target, database: Database[Any] | None, expected: int) -> Drained:
    return drain_worker(target, None, expected, store=NullStore())


# -- B: the plain loop -----------------------------------------------------------------


def apply_plain(collection: Collection[Any], fields: Mapping[str, str]) -> None:
    """One unguarded ``update_one``, no parsing beyond a substring test for ``fit_end``."""
    kind = fields["type"]
    job = fields["job_id"]
    if kind == "server.metrics":
        metrics = fields["metrics"]
        to_set = {"server_metrics": metrics}
        if '"fit_end"' in metrics:
            to_set["status"] = FINISHED
        collection.update_one({"_id": job}, {"$set": to_set})
    elif kind == "client.metrics":
        collection.update_one(
            {"_id": job, "clients_info.uuid": fields["client_uuid"]},
            {"$set": {"clients_info.$.metrics": fields["metrics"]}},
        )
    else:
        collection.update_one({"_id": job}, {"$set": {"status": fields["status"]}})


def drain_plain(target: Target, database: Database[Any] | None, expected: int) -> Drained:
    assert database is not None
    collection = database["job"]
    client = redis.Redis.from_url(target.redis_url, socket_timeout=5, decode_responses=True)
    try:
        create_group(client, target)
        handled = 0
        started = time.perf_counter()
        while True:
            reply: Any = client.xreadgroup(
                target.group, target.consumer, {target.stream: ">"}, count=BATCH
            )
            if not reply:
                break
            entries = reply[0][1]
            for _entry_id, fields in entries:
                apply_plain(collection, fields)
            client.xack(target.stream, target.group, *(entry_id for entry_id, _ in entries))
            handled += len(entries)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return Drained(seconds, handled)


# -- R: the read path alone ------------------------------------------------------------


def drain_read(target: Target, database: Database[Any] | None, expected: int) -> Drained:
    """XREADGROUP COUNT ``BATCH`` and one XACK per batch; replies as bytes (as the worker
    reads them), nothing looked at: the floor of any consumer of this stream."""
    client = redis.Redis.from_url(target.redis_url, socket_timeout=5)
    try:
        create_group(client, target)
        handled = 0
        started = time.perf_counter()
        while True:
            reply: Any = client.xreadgroup(
                target.group, target.consumer, {target.stream: ">"}, count=BATCH
            )
            if not reply:
                break
            entries = reply[0][1]
            client.xack(target.stream, target.group, *(entry_id for entry_id, _ in entries))
            handled += len(entries)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return Drained(seconds, handled)


# -- C: FastStream ---------------------------------------------------------------------


def drain_faststream(target: Target, database: Database[Any] | None, expected: int) -> Drained:
    """The idiomatic handler: FastStream decodes the entry's fields into ``body``.

    FastStream acknowledges each message after its handler returns; the clock stops
    once the group has nothing pending, so the last XACK is inside the time.
    """
    try:
        from faststream.redis import RedisBroker, StreamSub
    except ImportError as error:
        raise BenchFailure(
            "FastStream is not installed: pip install -e '.[bench]' (faststream[redis])"
        ) from error
    assert database is not None
    collection = database["job"]
    setup = redis.Redis.from_url(target.redis_url, socket_timeout=5)
    try:
        create_group(setup, target)  # at 0: FastStream's own would miss the backlog
    finally:
        setup.close()

    async def consume() -> Drained:
        # logger=None is FastStream's documented switch for no per-message log lines.
        broker = RedisBroker(target.redis_url, logger=None)  # type: ignore[arg-type]
        done = asyncio.Event()
        handled = 0
        subscription = StreamSub(
            target.stream, group=target.group, consumer=target.consumer, max_records=BATCH
        )

        @broker.subscriber(stream=subscription)
        async def handle(body: dict[str, str]) -> None:
            nonlocal handled
            apply_plain(collection, body)
            handled += 1
            if handled >= expected:
                done.set()

        started = time.perf_counter()
        await broker.start()
        try:
            await asyncio.wait_for(done.wait(), DRAIN_TIMEOUT_S)
            client = redis.asyncio.Redis.from_url(target.redis_url)
            try:
                while (await client.xpending(target.stream, target.group))["pending"]:
                    await asyncio.sleep(0.0005)
            finally:
                await client.aclose()
            seconds = time.perf_counter() - started
        finally:
            await broker.stop()
        return Drained(seconds, handled)

    return asyncio.run(consume())


DrainFunction = Callable[[Target, "Database[Any] | None", int], Drained]

SYSTEMS: Final[dict[str, DrainFunction]] = {
    "A": drain_worker,
    "A1": drain_worker_unbatched,
    "B": drain_plain,
    "C": drain_faststream,
    "D": drain_worker_null,
    "R": drain_read,
}
