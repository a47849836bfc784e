"""Small helpers shared by the worker tests."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis
from pymongo.database import Database

from worker.consumer import Worker
from worker.events import Event
from worker.observers import BatchObserver, Settled
from worker.outcomes import Decision, Outcome
from worker.positions import StreamPosition
from worker.requeues import RequeueRecord
from worker.settings import Settings
from worker.store import MongoJobStore

STREAM = "florist:events"
GROUP = "florist-worker"
DEAD = "florist:events:dead"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "consumer": "test-worker",
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "summary_interval_s": 3600,
        "unknown_retry_s": 0,  # dead-letter unknown jobs after max_deliveries alone
    }
    values.update(overrides)
    return Settings(**values)


def fixed_id(index: int) -> str:
    """Deterministic IDs (three per millisecond), so two runs can be compared field by field."""
    return f"{1_700_000_000_000 + index // 3}-{index % 3}"


def publish(
    client: redis.Redis, entries: Iterable[Mapping[str, str]], *, fixed_ids: bool = False
) -> list[str]:
    ids = []
    for index, fields in enumerate(entries):
        entry_id = client.xadd(STREAM, dict(fields), id=fixed_id(index) if fixed_ids else "*")
        ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return ids


def requeued(client: redis.Redis, fields: Mapping[str, str], origin_id: str) -> dict[str, str]:
    """``fields`` as `dlq requeue` writes them: ``origin_id`` with a token whose record
    (written here, as the requeue does) vouches for it."""
    token = f"test-{origin_id}-{len(fields)}-{time.monotonic_ns()}"
    written = {**fields, "origin_id": origin_id, "requeue_token": token}
    record = RequeueRecord.of({key.encode(): value.encode() for key, value in written.items()})
    client.hset(f"{STREAM}:requeued", token, record.text())
    return written


def server_metrics(job_id: str, metrics: Any, **extra: str) -> dict[str, str]:
    """A v1 ``server.metrics`` entry with ``metrics`` as its snapshot; ``extra`` adds or
    replaces fields."""
    return {
        "v": "1",
        "type": "server.metrics",
        "job_id": job_id,
        "metrics": json.dumps(metrics),
        **extra,
    }


def client_metrics(job_id: str, client_uuid: str, metrics: Any, **extra: str) -> dict[str, str]:
    """A v1 ``client.metrics`` entry with ``metrics`` as its snapshot; ``extra`` adds or
    replaces fields."""
    return {
        "v": "1",
        "type": "client.metrics",
        "job_id": job_id,
        "client_uuid": client_uuid,
        "metrics": json.dumps(metrics),
        **extra,
    }


def make_worker(client: redis.Redis, database: Database[Any], **overrides: Any) -> Worker:
    return Worker(client, database, settings(**overrides))


def job_of(database: Database[Any], job_id: str) -> dict[str, Any]:
    document = database["job"].find_one({"_id": job_id})
    assert document is not None
    return dict(document)


def decoded_metrics(document: dict[str, Any]) -> tuple[Any, list[Any]]:
    server = json.loads(document["server_metrics"]) if document.get("server_metrics") else None
    clients = [
        json.loads(c["metrics"]) if c.get("metrics") else None for c in document["clients_info"]
    ]
    return server, clients


def last_snapshots(entries: list[dict[str, str]]) -> tuple[Any, dict[str, Any]]:
    """The last server snapshot and each client's last snapshot in the samples."""
    server = None
    clients: dict[str, Any] = {}
    for fields in entries:
        if fields["type"] == "server.metrics":
            server = json.loads(fields["metrics"])
        elif fields["type"] == "client.metrics":
            clients[fields["client_uuid"]] = json.loads(fields["metrics"])
    return server, clients


class WithJobCollection:
    """A database whose ``job`` collection is ``collection`` (a test double wrapping the
    real one); everything else is the wrapped database's."""

    def __init__(self, database: Any, collection: Any) -> None:
        self._database = database
        self.collection = collection

    def __getitem__(self, name: str) -> Any:
        return self.collection if name == "job" else self._database[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)


class RecordingStore(MongoJobStore):
    """The real store, remembering every outcome per position (to prove exactly once)."""

    def __init__(self, database: Database[Any]) -> None:
        super().__init__(database)
        self.outcomes: dict[StreamPosition, list[Outcome]] = defaultdict(list)
        self._in_batch = False

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        outcome = super().apply(event, position, dry_run=dry_run)
        if not self._in_batch:
            self.outcomes[position].append(outcome)
        return outcome

    def apply_batch(self, items: Any, *, dry_run: bool = False) -> list[Decision]:
        self._in_batch = True  # what the batch applies one by one is recorded once, below
        try:
            results = super().apply_batch(items, dry_run=dry_run)
        finally:
            self._in_batch = False
        for (_event, position), (outcome, _error) in zip(items, results, strict=True):
            self.outcomes[position].append(outcome)
        return results

    def applied_twice(self) -> list[StreamPosition]:
        return [p for p, seen in self.outcomes.items() if Counter(seen)[Outcome.APPLIED] > 1]


class SlowStore(RecordingStore):
    """:class:`RecordingStore` taking ``delay_s`` over each event, so that a failover or a
    kill lands mid-run."""

    def __init__(self, database: Database[Any], delay_s: float) -> None:
        super().__init__(database)
        self.delay_s = delay_s

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        time.sleep(self.delay_s)
        return super().apply(event, position, dry_run=dry_run)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


def pending_of(client: redis.Redis, consumer: str | None = None) -> int:
    if consumer is None:
        return int(client.xpending(STREAM, GROUP)["pending"])
    rows = client.xpending_range(
        STREAM, GROUP, min="-", max="+", count=10_000, consumername=consumer
    )
    return len(rows)


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        for _id, fields in client.xrange(DEAD)
    ]


class SettledOutcomes(BatchObserver):
    """Every settled entry's outcomes, by entry ID, from any thread."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    def batch_settled(self, results: Sequence[Settled], seconds: float) -> None:
        with self.lock:
            for item, outcome in results:
                self.outcomes[item.entry.id].append(outcome.value)

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.outcomes)


class WorkerThread:
    """``Worker.run()`` in a thread for a ``with`` block, stopped and joined at its end."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the worker did not stop"
