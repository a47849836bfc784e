"""Batched writes: a batch in two MongoDB round trips, with every outcome exact.

The batched path (one projected read, the batch played in memory, one ordered
bulk_write) must decide exactly what the one-by-one path decides, event for event, and
leave the same document; the exactly-once property tests in test_concurrency.py run on
it too (batches of 3 entries or more take it).
"""

from __future__ import annotations

import json
from typing import Any

import mongomock_ng
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, WriteError

from tests.conftest import load_job_document, load_sample_entries
from tests.mongo_checks import CheckingDatabase
from tests.support import STREAM, WithJobCollection, job_of, make_worker, requeued
from worker.events import parse_entry
from worker.health import read_heartbeat
from worker.memorydb import EmulatedBulk
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.prometheus import PrometheusObserver
from worker.stats import collect_stats
from worker.store import MongoJobStore

SAMPLES = load_sample_entries()
JOB = load_job_document()


def _database() -> Any:
    database = CheckingDatabase(mongomock_ng.MongoClient()["batched"])
    database["job"].insert_one(load_job_document())
    return database


def test_the_sample_run_takes_two_round_trips(fake_redis):
    for fields in SAMPLES:
        fake_redis.xadd(STREAM, fields)
    batched = make_worker(fake_redis, _database())
    assert sum(batched.drain().values()) == len(SAMPLES)
    assert batched.round_trips == 2  # one read, one bulk_write

    fake_redis.flushall()
    for fields in SAMPLES:
        fake_redis.xadd(STREAM, fields)
    database = _database()
    one_by_one = make_worker(fake_redis, database, batched_writes=False)
    counts = one_by_one.drain()
    assert one_by_one.round_trips >= counts["applied"]
    assert one_by_one.round_trips_per_1000_events is not None


# ------------------------------------------------- the same decisions as one by one

CLIENT_UUIDS = sorted({c["uuid"] for c in JOB["clients_info"]})
# Heartbeats (issue 12) among the samples: liveness must come out the same too.
HEARTBEATS = [
    {"v": "1", "type": "host.heartbeat", "host_type": "server", "job_id": JOB["_id"]},
    *(
        {
            "v": "1",
            "type": "host.heartbeat",
            "host_type": "client",
            "job_id": JOB["_id"],
            "client_uuid": uuid,
        }
        for uuid in [*CLIENT_UUIDS, "no-such-client"]
    ),
]
ENTRIES = [*SAMPLES, *HEARTBEATS]
SAMPLE_EVENTS = [parse_entry(fields) for fields in ENTRIES]


def _by_uuid(index: int) -> Any:
    """The sample event named by a uuid instead of the job id, where it can be."""
    event = SAMPLE_EVENTS[index]
    fields = {k: v for k, v in ENTRIES[index].items() if k != "job_id"}
    if event.type in ("server.metrics", "job.status") or fields.get("host_type") == "server":
        fields["server_uuid"] = JOB.get("server_uuid") or "no-server-uuid"
    return parse_entry(fields)


events_with_positions = st.lists(
    st.tuples(
        st.integers(0, len(ENTRIES) - 1),  # which sample event (or heartbeat)
        st.integers(0, 60),  # its position (milliseconds): any order, repeats = redelivery
        st.sampled_from(["job_id", "uuid", "unknown job"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events_with_positions)
def test_a_batch_decides_and_writes_exactly_as_one_by_one(steps):
    items = []
    for index, milliseconds, naming in steps:
        if naming == "uuid":
            event = _by_uuid(index)
        elif naming == "unknown job":
            event = SAMPLE_EVENTS[index].with_job("no-such-job")
        else:
            event = SAMPLE_EVENTS[index]
        items.append((event, StreamPosition(milliseconds, index)))

    one = MongoJobStore(_database(), batched=False)
    expected = [one.apply(event, position) for event, position in items]
    batched_database = _database()
    batched = MongoJobStore(batched_database)

    got = batched.apply_batch(items)

    assert [outcome for outcome, _error in got] == expected
    assert job_of(batched_database, JOB["_id"]) == job_of(one.database, JOB["_id"])
    if len(items) >= 3:
        assert batched.round_trips <= 2


# --------------------------------------------- another writer between read and bulk


class RacedCollection:
    """Runs ``race`` once, right after the batch's projected read: another worker's write."""

    def __init__(self, collection: Any, race: Any) -> None:
        self._collection = collection
        self.race = race

    def find(self, *args: Any, **kwargs: Any) -> Any:
        documents = list(self._collection.find(*args, **kwargs))
        if self.race is not None:
            race, self.race = self.race, None
            race()
        return documents

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def _server(version: int) -> Any:
    return parse_entry(
        {
            "v": "1",
            "type": "server.metrics",
            "job_id": JOB["_id"],
            "metrics": json.dumps({"v": version}),
        }
    )


def _client(uuid: str, version: int) -> Any:
    return parse_entry(
        {
            "v": "1",
            "type": "client.metrics",
            "job_id": JOB["_id"],
            "client_uuid": uuid,
            "metrics": json.dumps({"v": version}),
        }
    )


def test_a_write_between_the_read_and_the_bulk_is_settled_exactly():
    database = _database()
    other_worker = MongoJobStore(database)

    def race() -> None:  # another worker applies a newer server snapshot meanwhile
        assert other_worker.apply(_server(7), StreamPosition(7, 0)) is Outcome.APPLIED

    store = MongoJobStore(
        WithJobCollection(database, RacedCollection(database["job"], race))  # type: ignore[arg-type]
    )
    items = [
        (_server(5), StreamPosition(5, 0)),
        (_client(CLIENT_UUIDS[0], 6), StreamPosition(6, 0)),
        (_client(CLIENT_UUIDS[1], 6), StreamPosition(6, 1)),
    ]

    outcomes = [outcome for outcome, _error in store.apply_batch(items)]

    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.APPLIED]
    document = job_of(database, JOB["_id"])
    assert json.loads(document["server_metrics"]) == {"v": 7}
    # read, bulk, read after the miss, then the one-by-one path: update (missed), read
    assert store.round_trips == 5


def test_a_requeued_old_snapshot_in_a_batch_never_overwrites_a_newer_one(fake_redis):
    database = _database()
    fake_redis.xadd(
        STREAM,
        {"v": "1", "type": "server.metrics", "job_id": JOB["_id"], "metrics": '{"v":2}'},
        id="10-0",
    )
    old = requeued(
        fake_redis,
        {"v": "1", "type": "server.metrics", "job_id": JOB["_id"], "metrics": '{"v":1}'},
        "9-0",
    )
    fake_redis.xadd(STREAM, old, id="11-0")
    fake_redis.xadd(
        STREAM,
        {"v": "1", "type": "job.status", "job_id": JOB["_id"], "status": "IN_PROGRESS"},
        id="12-0",
    )
    counts = make_worker(fake_redis, database).drain()
    assert counts == {"applied": 2, "coalesced": 1}  # the old one judged by its origin
    assert json.loads(job_of(database, JOB["_id"])["server_metrics"]) == {"v": 2}


# ------------------------------------------------------------------ observability


def test_round_trips_reach_prometheus_the_heartbeat_and_stats(fake_redis, tmp_path):
    for fields in SAMPLES:
        fake_redis.xadd(STREAM, fields)
    observer = PrometheusObserver()
    worker = make_worker(fake_redis, _database(), heartbeat_file=tmp_path / "beat")
    worker.observers.append(observer)
    worker.drain()
    worker._heartbeat()

    assert observer.registry.get_sample_value("florist_worker_mongodb_round_trips_total") == 2
    beat = read_heartbeat(tmp_path / "beat")
    assert beat is not None and beat.events == len(SAMPLES) and beat.mongodb_round_trips == 2
    stats = collect_stats(fake_redis, worker.settings)
    assert stats.worker_round_trips_per_1000_events == round(2000 / len(SAMPLES), 2)


# ------------------------------------------------ the emulated bulk of mongomock-ng


def test_the_emulated_bulk_stops_at_the_first_write_error_as_pymongo_documents():
    collection = mongomock_ng.MongoClient()["emulated"]["job"]
    collection.insert_many([{"_id": "a", "n": 0}, {"_id": "b", "n": 0}])

    class Refusing:
        def update_one(self, query: Any, update: Any, **kwargs: Any) -> Any:
            if query["_id"] == "b":
                raise WriteError("Document failed validation", 121, {"code": 121})
            return collection.update_one(query, update, **kwargs)

    requests = [
        UpdateOne({"_id": "a"}, {"$set": {"n": 1}}),
        UpdateOne({"_id": "missing"}, {"$set": {"n": 1}}),
        UpdateOne({"_id": "b"}, {"$set": {"n": 1}}),
        UpdateOne({"_id": "a"}, {"$set": {"n": 2}}),
    ]
    with pytest.raises(BulkWriteError) as raised:
        EmulatedBulk(Refusing()).bulk_write(requests)

    details = raised.value.details
    assert details["nMatched"] == 1
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(2, 121)]
    assert collection.find_one({"_id": "a"})["n"] == 1  # nothing after the error ran
