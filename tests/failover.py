"""What the failover tests share: a worker consuming in a thread, every outcome recorded,
and the checks that a failover lost nothing, doubled nothing and left the document as a
single worker on a plain Redis makes it."""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import mongomock_ng
import redis
import structlog
from pymongo.database import Database

from tests.support import SettledOutcomes, SlowStore, fixed_id, job_of, settings
from tests.support import wait_until as wait
from worker.connections import connect_redis
from worker.consumer import Worker
from worker.settings import Settings

STREAM = "{failover}:events"
DEAD = f"{STREAM}:dead"
GROUP = "florist-worker"
OUTAGE_LOGGED = "outage: backing off, acknowledging nothing"
REREAD_LOGGED = "re-reading this consumer's pending entries after a Redis Cluster outage"


def failover_settings(redis_url: str, tmp_path: Any, **overrides: Any) -> Settings:
    """Short socket timeout and backoff, so that a test sees a failover end quickly."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "stream": STREAM,
        "batch_size": 2,
        "block_ms": 200,
        "socket_timeout_s": 1.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "stale_after_s": 0,
        "heartbeat_file": tmp_path / "heartbeat",
    }
    return settings(**(values | overrides))


def reference_document(
    client: redis.Redis, job_document: dict[str, Any], entries: list[dict[str, str]]
) -> dict[str, Any]:
    """The document one worker makes on a plain Redis: in stream order, one entry a batch."""
    database = mongomock_ng.MongoClient()["reference"]
    database["job"].insert_one(copy.deepcopy(job_document))
    for index, fields in enumerate(entries):
        client.xadd(STREAM, fields, id=fixed_id(index))  # type: ignore[arg-type]
    Worker(client, database, settings(stream=STREAM, batch_size=1, stale_after_s=0)).drain()
    return job_of(database, job_document["_id"])


class Consuming:
    """``Worker.run()`` in a thread, its logs captured, every settled
    outcome recorded; stopped (and joined) on exit."""

    def __init__(self, worker_settings: Settings, database: Database[Any]) -> None:
        self.settings = worker_settings
        self.client = connect_redis(self.settings)
        self.store = SlowStore(database, delay_s=0.03)
        self.settled = SettledOutcomes()
        self.worker = Worker(
            self.client, None, self.settings, store=self.store, observers=[self.settled]
        )
        self.failures: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._capture = structlog.testing.capture_logs()
        self.logs: list[dict[str, Any]] = []

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as error:  # reported by the assertions
            self.failures.append(error)
            raise

    def __enter__(self) -> Consuming:
        self.logs = self._capture.__enter__()
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.worker.stop()
        self.thread.join(timeout=15)
        self._capture.__exit__(kind, error, traceback)
        self.client.close()

    def wait_settled(self, ids: Sequence[str], what: str, timeout_s: float = 45) -> None:
        """Until every entry of ``ids`` is settled (or the worker ended)."""
        missing = f"{what} (the worker's last log lines: {self.logs[-12:]})"
        wait(
            lambda: self.settled.ids() >= set(ids) or not self.thread.is_alive(),
            timeout_s,  # generous: a loaded machine slows the re-election and the retries
            missing,
        )

    def pending(self) -> int:
        return int(self.client.xpending(STREAM, GROUP)["pending"])


def assert_consumed_once(
    run: Consuming, ids: Sequence[str], database: Database[Any], reference: dict[str, Any]
) -> None:
    """Nothing lost, nothing applied twice, nothing dead-lettered, the worker still running,
    the document the plain-Redis run's; and, if the worker met an outage, its end logged."""
    assert not run.failures, run.failures
    assert run.thread.is_alive(), [entry["event"] for entry in run.logs][-30:]
    assert run.settled.ids() == set(ids), [entry["event"] for entry in run.logs][-30:]
    wait(lambda: run.pending() == 0, 20, "no entry left pending")
    document = job_of(database, reference["_id"])
    assert document == reference
    assert run.store.applied_twice() == []
    for entry_id, outcomes in run.settled.outcomes.items():
        effective = [o for o in outcomes if o in ("applied", "coalesced")]
        assert len(effective) == 1, (entry_id, outcomes)
        assert set(outcomes) <= {"applied", "coalesced", "duplicate"}, (entry_id, outcomes)
    assert run.worker.dead_lettered == 0
    assert run.client.exists(DEAD) == 0
    events = [entry["event"] for entry in run.logs]
    outages = [entry for entry in run.logs if entry["event"] == OUTAGE_LOGGED]
    assert all(entry["service"] == "redis" for entry in outages), Counter(events)
    if outages:
        assert "outage over" in events, Counter(events)
        if run.settings.redis_cluster:
            assert REREAD_LOGGED in events, Counter(events)
