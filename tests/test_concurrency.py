"""Two workers of one group, crashes and redelivery: the document is always the same."""

from __future__ import annotations

import time

import mongomock_ng
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_job_document, load_sample_entries
from tests.support import RecordingStore, job_of, pending_of, publish
from tests.support import settings as worker_settings
from worker.consumer import Worker

SAMPLES = load_sample_entries()
JOB = load_job_document()


def _fresh_database():
    database = mongomock_ng.MongoClient()["florist-test"]
    database["job"].insert_one(load_job_document())
    return database


def _reference_document(client):
    """One worker, stream order, one entry per batch: the document to match."""
    client.flushall()
    database = _fresh_database()
    publish(client, SAMPLES, fixed_ids=True)
    Worker(client, database, worker_settings(batch_size=1)).drain()
    client.flushall()
    return job_of(database, JOB["_id"])


# One step of the schedule: (worker, action, size, which held batch)
steps = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from(["read", "handle", "crash_before_apply", "crash_after_apply", "redeliver"]),
        st.integers(1, 9),
        st.integers(0, 50),
    ),
    max_size=40,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schedule=steps)
def test_two_workers_in_any_interleaving_match_one_worker_in_order(fake_redis, schedule):
    reference = _reference_document(fake_redis)
    assert reference["status"] == "FINISHED_SUCCESSFULLY"
    database = _fresh_database()
    stores = [RecordingStore(database), RecordingStore(database)]
    workers = [
        Worker(fake_redis, None, worker_settings(consumer=f"w{i}", claim_idle_ms=1), store=s)
        for i, s in enumerate(stores)
    ]
    publish(fake_redis, SAMPLES, fixed_ids=True)
    for worker in workers:
        worker.stream.ensure_group()
    held: list[list[tuple[int, list]]] = [[], []]  # batches read but not yet settled

    for who, action, size, pick in schedule:
        worker, mine = workers[who], held[who]
        if action == "read":
            entries = worker.stream.read_new(size, None)
            if entries:
                mine.append(entries)
        elif mine:
            batch = mine.pop(pick % len(mine))
            if action == "handle":
                worker._handle(batch)
            elif action == "crash_after_apply":
                for entry in batch:  # applied, then died before XACK
                    planned = worker_plan(worker, entry)
                    if planned is not None:
                        worker.store.apply(*planned)
            elif action == "redeliver":
                worker._handle(batch)
                worker._handle(batch)  # a second delivery of the same
            # crash_before_apply: the batch is simply dropped; its entries stay pending

    # The survivors: whatever is pending or unread is claimed and finished.
    time.sleep(0.002)
    for worker in workers:
        worker.drain()
    time.sleep(0.002)
    workers[0].drain()

    assert pending_of(fake_redis) == 0
    assert job_of(database, JOB["_id"]) == reference
    assert stores[0].applied_twice() == [] and stores[1].applied_twice() == []
    both = {**stores[0].outcomes}
    for position, seen in stores[1].outcomes.items():
        both.setdefault(position, []).extend(seen)
    assert all(seen.count("applied") <= 1 for seen in both.values())


def worker_plan(worker, entry):
    from worker.batch import plan_entry

    planned = plan_entry(entry, worker.settings.limits)
    if planned.event is None:
        return None
    return planned.event, planned.position


def _crash_scenario(client, crash_after_apply: bool):
    database = _fresh_database()
    store_a, store_b = RecordingStore(database), RecordingStore(database)
    dying = Worker(client, None, worker_settings(consumer="dying"), store=store_a)
    publish(client, SAMPLES, fixed_ids=True)
    dying.stream.ensure_group()
    batch = dying.stream.read_new(20, None)
    if crash_after_apply:
        for entry in batch:
            planned = worker_plan(dying, entry)
            assert planned is not None
            store_a.apply(*planned)
    # the process dies here: nothing acknowledged
    assert pending_of(client, "dying") == 20

    survivor = Worker(
        client, None, worker_settings(consumer="survivor", claim_idle_ms=5), store=store_b
    )
    time.sleep(0.01)
    survivor.drain()
    return database, store_a, store_b


def test_crash_after_reading_before_applying(real_redis):
    reference = _reference_document(real_redis)
    database, store_a, store_b = _crash_scenario(real_redis, crash_after_apply=False)
    assert store_a.outcomes == {}
    assert job_of(database, JOB["_id"]) == reference
    assert pending_of(real_redis) == 0
    assert store_b.applied_twice() == []


def test_crash_after_applying_before_acknowledging(real_redis):
    reference = _reference_document(real_redis)
    database, store_a, store_b = _crash_scenario(real_redis, crash_after_apply=True)
    assert job_of(database, JOB["_id"]) == reference
    assert pending_of(real_redis) == 0
    applied_by_a = {p for p, seen in store_a.outcomes.items() if "applied" in seen}
    assert len(applied_by_a) == 20
    for position in applied_by_a:  # the survivor never applied them a second time
        assert "applied" not in store_b.outcomes.get(position, [])
