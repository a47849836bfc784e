"""host.heartbeat and liveness on the job document (issue 12): stream time that only moves
forward, whatever the order of delivery; heartbeats coalesced in a batch, never metrics."""

from __future__ import annotations

import itertools
import json
from typing import Any

import mongomock_ng

from tests.conftest import load_job_document
from tests.mongo_checks import CheckingDatabase
from tests.support import STREAM, job_of, make_worker, requeued
from worker.document import apply_to, group_state
from worker.effects import after_miss, first_write
from worker.entities import Job
from worker.events import entry_json_schema, parse_entry
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.store import MongoJobStore

JOB = load_job_document()
JOB_ID = JOB["_id"]
CLIENT = JOB["clients_info"][0]["uuid"]


def _database() -> Any:
    database = CheckingDatabase(mongomock_ng.MongoClient()["heartbeats"])
    database["job"].insert_one(load_job_document())
    return database


SERVER_BEAT = {"v": "1", "type": "host.heartbeat", "host_type": "server", "job_id": JOB_ID}
CLIENT_BEAT = {"v": "1", "type": "host.heartbeat", "host_type": "client", "client_uuid": CLIENT}
SERVER_METRICS = {"v": "1", "type": "server.metrics", "job_id": JOB_ID, "metrics": '{"a": 1}'}
CLIENT_METRICS = {
    "v": "1",
    "type": "client.metrics",
    "job_id": JOB_ID,
    "client_uuid": CLIENT,
    "metrics": '{"c": 1}',
}


def test_every_event_of_a_host_counts_and_only_the_newest_time_stays():
    items = [
        (parse_entry(SERVER_BEAT), StreamPosition(30, 0)),
        (parse_entry(SERVER_METRICS), StreamPosition(20, 0)),
        (parse_entry(CLIENT_BEAT), StreamPosition(25, 0)),
        (parse_entry(CLIENT_METRICS), StreamPosition(40, 0)),
        (parse_entry({**SERVER_BEAT, "job_id": JOB_ID}), StreamPosition(10, 0)),
    ]
    documents = []
    for order in itertools.permutations(items):
        database = _database()
        store = MongoJobStore(database, batched=False)
        for event, position in order:
            store.apply(event, position)
        documents.append(job_of(database, JOB_ID))
    first = documents[0]
    assert all(document == first for document in documents)
    assert first["server_last_event_ms"] == 30
    assert first["clients_info"][0]["last_event_ms"] == 40
    assert "last_event_ms" not in first["clients_info"][1]
    assert json.loads(first["server_metrics"]) == {"a": 1}  # heartbeats never touch metrics
    Job(**first)


def test_outcomes_of_heartbeats():
    store = MongoJobStore(_database(), batched=False)
    beat = parse_entry(SERVER_BEAT)
    assert store.apply(beat, StreamPosition(5, 0)) is Outcome.APPLIED
    assert store.apply(beat, StreamPosition(5, 0)) is Outcome.DUPLICATE
    assert store.apply(beat, StreamPosition(4, 9)) is Outcome.DUPLICATE
    assert store.apply(beat, StreamPosition(6, 0)) is Outcome.APPLIED
    stranger = parse_entry({**CLIENT_BEAT, "client_uuid": "nobody"})
    assert store.apply(stranger, StreamPosition(7, 0)) is Outcome.UNKNOWN_JOB
    named = parse_entry({**CLIENT_BEAT, "client_uuid": "nobody", "job_id": JOB_ID})
    assert store.apply(named, StreamPosition(7, 0)) is Outcome.UNKNOWN_CLIENT
    assert store.apply(beat.with_job("missing"), StreamPosition(8, 0)) is Outcome.UNKNOWN_JOB


def test_the_in_memory_play_agrees_with_the_update():
    document = {"_id": JOB_ID, "status": "IN_PROGRESS", "clients_info": [{"uuid": CLIENT}]}
    event = parse_entry({**CLIENT_BEAT, "job_id": JOB_ID})
    position = StreamPosition(9, 0)
    write = first_write(event, position)
    assert write is not None and "$set" not in write.update
    decision = after_miss(event, position, document)
    assert decision == write
    before = group_state(document, ("client", CLIENT))
    apply_to(document, write)
    assert document["clients_info"][0]["last_event_ms"] == 9
    assert group_state(document, ("client", CLIENT)) != before
    assert after_miss(event, StreamPosition(8, 0), document) is Outcome.DUPLICATE


def test_a_batch_coalesces_heartbeats_per_host(fake_redis):
    database = _database()
    for _ in range(3):
        fake_redis.xadd(STREAM, SERVER_BEAT)
        fake_redis.xadd(STREAM, CLIENT_BEAT)
    fake_redis.xadd(STREAM, SERVER_METRICS)
    counts = make_worker(fake_redis, database).drain()
    assert counts == {"coalesced": 4, "applied": 3}
    [*_, _last_beat, last_metrics] = fake_redis.xrange(STREAM)
    document = job_of(database, JOB_ID)
    assert document["server_last_event_ms"] == int(last_metrics[0].decode().split("-")[0])
    assert document["clients_info"][0]["last_event_ms"] <= document["server_last_event_ms"]


def test_a_requeued_heartbeat_counts_at_its_origin(fake_redis):
    database = _database()
    fake_redis.xadd(STREAM, requeued(fake_redis, SERVER_BEAT, "1000-0"), id="5000-0")
    assert make_worker(fake_redis, database).drain() == {"applied": 1}
    assert job_of(database, JOB_ID)["server_last_event_ms"] == 1000


def test_the_schema_names_the_heartbeat():
    schema = json.dumps(entry_json_schema())
    assert "host.heartbeat" in schema and "host_type" in schema
