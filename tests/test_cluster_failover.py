"""A failover while the worker consumes: the primary holding the stream's slot is killed,
its replica takes over, and the worker carries on, with nothing lost, nothing applied
twice and nothing dead-lettered.

The test has a cluster of its own (it breaks it) with a 1 s node timeout, so the replica
is promoted about two seconds after the kill.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
import structlog
from pymongo.database import Database

from tests.redis_cluster import LocalCluster
from tests.support import (
    SettledOutcomes,
    SlowStore,
    decoded_metrics,
    job_of,
    last_snapshots,
    settings,
)
from tests.support import wait_until as wait
from worker.connections import connect_redis
from worker.consumer import Worker
from worker.producer import EventPublisher

pytestmark = pytest.mark.redis_cluster

STREAM = "{failover}:events"


def test_a_failover_while_consuming_loses_nothing_and_doubles_nothing(
    tmp_path, database: Database[Any], job_document, sample_entries
):
    with LocalCluster(tmp_path / "cluster") as cluster:
        worker_settings = settings(
            redis_url=cluster.url,
            redis_cluster=True,
            stream=STREAM,
            batch_size=2,
            block_ms=200,
            socket_timeout_s=1.0,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
            heartbeat_file=tmp_path / "heartbeat",
        )
        database["job"].insert_one(job_document)
        publisher = EventPublisher.from_url(cluster.url, STREAM, cluster=True)
        before, after = sample_entries[:30], sample_entries[30:]
        published = [publisher.publish_fields(fields) for fields in before]
        primary = cluster.primary_for(STREAM)
        replica = cluster.replica_of(primary)
        cluster.wait_replicated(primary)  # what the producers wrote survives the failover

        store = SlowStore(database, delay_s=0.03)
        settled = SettledOutcomes()
        client = connect_redis(worker_settings)
        worker = Worker(client, None, worker_settings, store=store, observers=[settled])
        with structlog.testing.capture_logs() as logs:
            failures: list[BaseException] = []

            def run() -> None:
                try:
                    worker.run()
                except BaseException as error:  # reported by the assertion below
                    failures.append(error)
                    raise

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            try:
                wait(lambda: len(settled.ids()) >= 8, 20, "the worker to be under way")
                cluster.kill(primary)
                killed_at = time.monotonic()
                cluster.wait_promoted(replica)
                promoted_s = time.monotonic() - killed_at
                # Producers follow the new topology too (a publish fails fast while the
                # client still points at the dead primary; it re-read the slots then).
                published += [_publish(publisher, fields) for fields in after]
                wait(
                    lambda: settled.ids() >= set(published) or not thread.is_alive(),
                    60,  # generous: a loaded CI machine slows the re-election and retries
                    "every entry to be settled",
                )
                assert not failures, failures
                assert settled.ids() >= set(published), [e["event"] for e in logs][-30:]
                wait(lambda: _pending(client) == 0, 10, "no entry left pending")
            finally:
                worker.stop()
                thread.join(timeout=15)
                publisher.close()
        assert not thread.is_alive()

        # Nothing lost: every entry took effect; the document is the sample run's end.
        document = job_of(database, job_document["_id"])
        assert document["status"] == "FINISHED_SUCCESSFULLY"
        server, clients = decoded_metrics(document)
        expected_server, expected_clients = last_snapshots(sample_entries)
        assert server == expected_server
        for info, metrics in zip(document["clients_info"], clients, strict=True):
            assert metrics == expected_clients[info["uuid"]]
        assert settled.ids() == set(published)
        # Nothing applied twice: a redelivery after the failover is a duplicate.
        assert store.applied_twice() == []
        for entry_id, outcomes in settled.outcomes.items():
            effective = [o for o in outcomes if o in ("applied", "coalesced")]
            assert len(effective) == 1, (entry_id, outcomes)
            assert set(outcomes) <= {"applied", "coalesced", "duplicate"}, (entry_id, outcomes)
        # Nothing dead-lettered because of it.
        assert worker.dead_lettered == 0
        assert client.exists(f"{STREAM}:dead") == 0
        assert _pending(client) == 0

        # What it looks like in the logs: an outage of redis, then its end.
        events = [entry["event"] for entry in logs]
        outages = [e for e in logs if e["event"] == "outage: backing off, acknowledging nothing"]
        assert outages and all(e["service"] == "redis" for e in outages), Counter(events)
        assert "outage over" in events
        assert "re-reading this consumer's pending entries after a Redis Cluster outage" in events
        assert promoted_s < 15
        client.close()


def _publish(publisher: EventPublisher, fields: dict[str, str]) -> str:
    for _attempt in range(20):
        try:
            return publisher.publish_fields(fields)
        except redis.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("the producer did not reach the promoted primary")


def _pending(client: Any) -> int:
    return int(client.xpending(STREAM, "florist-worker")["pending"])
