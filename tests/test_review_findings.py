"""Edge cases found in review: repeated uuids, claim races, refused writes, misconfigured
dead-letter key, failover errors, forged origin IDs."""

from __future__ import annotations

import json
import time

import pytest
import redis
from pymongo.errors import WriteError

from tests.support import (
    DEAD,
    STREAM,
    dead_letters,
    job_of,
    make_worker,
    pending_of,
    requeued,
)
from worker.stream import DeadStreamMisconfigured

JOB = "job-1"


def _client_event(version, **extra):
    return {
        "v": "1",
        "type": "client.metrics",
        "job_id": JOB,
        "client_uuid": "u",
        "metrics": json.dumps({"version": version}),
        **extra,
    }


def test_a_repeated_uuid_gets_the_same_snapshot_in_every_copy(fake_redis, database):
    database["job"].insert_one(
        {"_id": JOB, "status": "IN_PROGRESS", "clients_info": [{"uuid": "u"}, {"uuid": "u"}]}
    )
    fake_redis.xadd(STREAM, _client_event(2), id="5-2")  # the newer one first
    worker = make_worker(fake_redis, database, batch_size=1)
    assert worker.drain() == {"applied": 1}
    fake_redis.xadd(STREAM, requeued(fake_redis, _client_event(1), "5-1"), id="6-0")
    fake_redis.xadd(STREAM, requeued(fake_redis, _client_event(2), "5-2"), id="6-1")
    assert worker.drain() == {"duplicate": 2}
    metrics = [json.loads(c["metrics"]) for c in job_of(database, JOB)["clients_info"]]
    assert metrics == [{"version": 2}, {"version": 2}]


def test_an_entry_claimed_by_another_worker_meanwhile_is_not_taken_as_lost(real_redis, database):
    real_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"}
    )
    a = make_worker(real_redis, database, consumer="a", retry_idle_ms=1)
    assert a.drain() == {"unknown_job": 1}
    stale = real_redis.xpending_range(STREAM, "florist-worker", "-", "+", 10, consumername="a")
    # Between a's XPENDING and a's XCLAIM, b claims the entry.
    real_redis.xclaim(STREAM, "florist-worker", "b", 0, [stale[0]["message_id"]])
    original = a.stream.client.xpending_range
    a.stream.client.xpending_range = lambda *args, **kwargs: stale
    try:
        # b's claim just reset the entry's idle time, so a's XCLAIM (min idle 1 s) skips it
        assert a.stream.claim_own_retries(1_000, 10) == []
    finally:
        a.stream.client.xpending_range = original
    assert pending_of(real_redis, "b") == 1  # still pending, for b to retry


class RefusingCollection:
    """Refuses every write to one job, as MongoDB does for a document over 16 MiB."""

    def __init__(self, collection):
        self.collection = collection

    def update_one(self, query, update, **kwargs):
        if query["_id"] == "big":
            raise WriteError("Resulting document after update is larger than 16777216", 17419)
        return self.collection.update_one(query, update, **kwargs)

    def find_one(self, *args, **kwargs):
        return self.collection.find_one(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.collection, name)


class RefusingDatabase:
    def __init__(self, database):
        self.database = database

    def __getitem__(self, name):
        return RefusingCollection(self.database[name])


def test_a_write_mongodb_refuses_does_not_block_the_others(real_redis, database):
    database["job"].insert_many(
        [{"_id": "big", "status": "IN_PROGRESS"}, {"_id": JOB, "status": "NOT_STARTED"}]
    )
    for job in ("big", JOB):
        real_redis.xadd(
            STREAM, {"v": "1", "type": "server.metrics", "job_id": job, "metrics": "{}"}
        )
    worker = make_worker(real_redis, RefusingDatabase(database), retry_idle_ms=1, max_deliveries=2)
    assert worker.drain() == {"store_error": 1, "applied": 1}
    assert job_of(database, JOB)["server_metrics"] == "{}"
    time.sleep(0.005)
    assert worker.drain() == {"store_error": 1}
    [letter] = dead_letters(real_redis)
    assert letter["dead_reason"] == "store_error" and "16777216" in letter["dead_error"]
    assert pending_of(real_redis) == 0


def test_a_dead_letter_key_of_another_type_stops_the_worker_before_anything_is_acked(
    real_redis, database
):
    real_redis.set(DEAD, "not a stream")
    real_redis.xadd(STREAM, {"v": "1"})
    with pytest.raises(DeadStreamMisconfigured, match="holds a string"):
        make_worker(real_redis, database).drain()
    assert real_redis.xlen(STREAM) == 1
    assert real_redis.get(DEAD) == b"not a stream"


class FailingOver:
    """A client whose first reads fail as a demoted primary's do during a failover."""

    def __init__(self, client, failures):
        self._client = client
        self._failures = failures

    def xreadgroup(self, *args, **kwargs):
        if self._failures:
            self._failures -= 1
            raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
        return self._client.xreadgroup(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_failover_is_waited_out_like_an_outage(fake_redis, database):
    database["job"].insert_one({"_id": JOB, "status": "NOT_STARTED"})
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"}
    )
    worker = make_worker(FailingOver(fake_redis, 3), database)
    assert worker.drain() == {"applied": 1}


def test_an_origin_id_after_the_entry_itself_is_invalid(fake_redis, database):
    database["job"].insert_one(
        {"_id": JOB, "status": "IN_PROGRESS", "clients_info": [{"uuid": "u"}]}
    )
    fake_redis.xadd(STREAM, requeued(fake_redis, _client_event(1), "99999999999999-0"), id="5-0")
    fake_redis.xadd(STREAM, _client_event(2), id="6-0")
    assert make_worker(fake_redis, database, batch_size=1).drain() == {"invalid": 1, "applied": 1}
    assert "not before the entry's own ID" in dead_letters(fake_redis)[0]["dead_error"]
    assert json.loads(job_of(database, JOB)["clients_info"][0]["metrics"]) == {"version": 2}
