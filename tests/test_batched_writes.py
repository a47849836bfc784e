"""Batched writes: a batch in two MongoDB round trips, with every outcome exact.

The batched path (one projected read, the batch played in memory, one ordered
bulk_write) must decide exactly what the one-by-one path decides, event for event, and
leave the same document; the exactly-once property tests in test_concurrency.py run on
it too (batches of 3 entries or more take it).
"""

from __future__ import annotations

import json
import os
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
from worker.document import CLIENT_LAST_EVENT, SERVER_LAST_EVENT
from worker.events import parse_entry
from worker.health import read_heartbeat
from worker.memorydb import EmulatedBulk
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.prometheus import PrometheusObserver
from worker.stats import collect_stats
from worker.store import MongoJobStore

# ``./dev fuzz N`` multiplies the example budget of the property with other writers.
SCALE = int(os.environ.get("FLORIST_FUZZ_SCALE", "1"))
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


def _items(steps: list[tuple[int, int, bool]]) -> list[Any]:
    return [
        (_by_uuid(index) if by_uuid else SAMPLE_EVENTS[index], StreamPosition(ms, index))
        for index, ms, by_uuid in steps
    ]


# ------------------------------------------ other writers between batches: still exact

step = st.tuples(
    st.integers(0, len(ENTRIES) - 1),  # which sample event (or heartbeat)
    st.integers(0, 60),  # its position (milliseconds): any order, repeats = redelivery
    st.booleans(),  # named by uuid
)

meddling = st.one_of(
    st.tuples(st.just("apply"), st.lists(step, min_size=1, max_size=4)),  # another worker
    st.tuples(st.just("rebuild"), st.none()),  # an operator's fresh document
    st.tuples(st.just("status"), st.sampled_from(["IN_PROGRESS", "FINISHED_WITH_ERROR"])),
    st.tuples(st.just("liveness"), st.integers(0, 80)),
    st.tuples(st.just("nothing"), st.none()),
    # What the API or an operator may do to clients_info (Job.set_uuids and the like).
    st.tuples(st.just("duplicate_client"), st.integers(0, 5)),
    st.tuples(st.just("add_client"), st.sampled_from(["no-such-client", "another"])),
    st.tuples(
        st.just("rename_client"),
        st.tuples(st.integers(0, 5), st.sampled_from([*CLIENT_UUIDS, "no-such-client"])),
    ),
    st.tuples(st.just("remove_client"), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.none()),
)

batches = st.lists(
    st.tuples(st.lists(step, min_size=3, max_size=12), st.lists(meddling, max_size=3)),
    min_size=2,
    max_size=5,
)


def _meddle(database: Any, kind: str, argument: Any) -> None:
    jobs = database["job"]
    if kind == "apply":
        other = MongoJobStore(database, batched=False)
        for event, position in _items(argument):
            other.apply(event, position)
    elif kind == "rebuild":
        jobs.replace_one({"_id": JOB["_id"]}, load_job_document(), upsert=True)
    elif kind == "delete":
        jobs.delete_one({"_id": JOB["_id"]})
    elif kind in ("duplicate_client", "add_client", "rename_client", "remove_client"):
        document = jobs.find_one({"_id": JOB["_id"]})
        if document is None:
            return
        clients = list(document.get("clients_info") or [])
        if kind == "add_client":
            clients.append({**(clients[0] if clients else {}), "uuid": argument})
        elif clients and kind == "duplicate_client":
            clients.append(dict(clients[argument % len(clients)]))
        elif clients and kind == "rename_client":
            which, uuid = argument
            clients[which % len(clients)] = {**clients[which % len(clients)], "uuid": uuid}
        elif clients:
            del clients[argument % len(clients)]
        jobs.update_one({"_id": JOB["_id"]}, {"$set": {"clients_info": clients}})
    elif kind == "status":
        jobs.update_one({"_id": JOB["_id"]}, {"$set": {"status": argument}})
    elif kind == "liveness":
        jobs.update_one(
            {"_id": JOB["_id"]},
            {
                "$max": {
                    SERVER_LAST_EVENT: argument,
                    f"clients_info.$[].{CLIENT_LAST_EVENT}": argument,
                }
            },
        )


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_batches_with_other_writers_between_them_end_as_one_by_one(plan):
    """Each batch applied as one, then somebody else changes the job (another worker, the
    API's clients_info, an operator): the outcomes and the document are those of the same
    events applied one at a time."""
    reference = _database()
    one = MongoJobStore(reference, batched=False)
    database = _database()
    store = MongoJobStore(database)

    for steps, meddles in plan:
        items = _items(steps)
        expected = [one.apply(event, position) for event, position in items]
        got = [outcome for outcome, _error in store.apply_batch(items)]
        assert got == expected
        assert database["job"].find_one({"_id": JOB["_id"]}) == reference["job"].find_one(
            {"_id": JOB["_id"]}
        )
        for kind, argument in meddles:
            _meddle(reference, kind, argument)
            _meddle(database, kind, argument)
