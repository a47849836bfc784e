"""A batch decided on remembered state: one round trip, and never a different result.

After a fully matched batch the store remembers each job as the batch left it
(worker/remembered.py) and decides the next batch on that without reading: one
``bulk_write``. Memory is a belief; the writes stay guarded in MongoDB. These tests
search for a sequence of batches, with other writers changing the jobs between them,
on which the store with memory ends anywhere else than applying the same events one
by one would.
"""

from __future__ import annotations

import os
from typing import Any

import mongomock_ng
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_job_document
from tests.mongo_checks import CheckingDatabase
from tests.support import job_of
from tests.test_batched_writes import CLIENT_UUIDS, ENTRIES, JOB, SAMPLE_EVENTS, _by_uuid
from worker.effects import CLIENT_LAST_EVENT, SERVER_LAST_EVENT, groups_of
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.remembered import AGREEING_BATCHES, RememberedJobs
from worker.store import MongoJobStore

# ``./dev fuzz N`` multiplies the example budget.
SCALE = int(os.environ.get("FLORIST_FUZZ_SCALE", "1"))


def _database() -> Any:
    database = CheckingDatabase(mongomock_ng.MongoClient()["remembered"])
    database["job"].insert_one(load_job_document())
    return database


def _items(steps: list[tuple[int, int, bool]]) -> list[Any]:
    return [
        (_by_uuid(index) if by_uuid else SAMPLE_EVENTS[index], StreamPosition(ms, index))
        for index, ms, by_uuid in steps
    ]


def test_a_second_batch_of_a_remembered_job_is_one_round_trip():
    store = MongoJobStore(_database())
    first = _items([(i, 10 + i, False) for i in range(0, 12)])
    second = _items([(i, 100 + i, False) for i in range(12, 24)])

    store.apply_batch(first)
    assert store.round_trips == 2  # the read, the bulk
    store.apply_batch(second)

    assert store.round_trips == 3  # the bulk alone


def test_a_redelivered_batch_is_always_read():
    """Entries another consumer may have applied already (claimed, retried, replayed):
    memory cannot know what that consumer did with the very same entries."""
    store = MongoJobStore(_database())
    store.apply_batch(_items([(i, 10 + i, False) for i in range(0, 12)]))
    trips = store.round_trips

    store.apply_batch(_items([(i, 100 + i, False) for i in range(12, 24)]), redelivered=True)

    assert store.round_trips == trips + 2  # the read, the bulk


def test_wrong_memory_costs_a_settle_read_and_one_more_bulk_however_large_the_batch():
    """The job was rebuilt after the store remembered it: every pinned write misses, the
    settle reads the job once and decides the batch again as a batch (not one by one)."""
    database = _database()
    store = MongoJobStore(database)
    store.apply_batch(_items([(i, 10 + i, False) for i in range(0, 12)]))
    database["job"].replace_one({"_id": JOB["_id"]}, load_job_document())
    trips = store.round_trips
    later = _items([(i, 100 + i, False) for i in range(12, 36)])
    reference = MongoJobStore(_database(), batched=False)

    outcomes = [outcome for outcome, _error in store.apply_batch(later)]

    assert outcomes == [reference.apply(event, position) for event, position in later]
    assert store.round_trips == trips + 3  # the bulk that missed, the settle read, a bulk
    assert job_of(database, JOB["_id"]) == job_of(reference.database, JOB["_id"])
    assert not store._remembered.trusted  # wrong once: read every batch for a while


def test_outcomes_without_a_write_decided_on_memory_are_confirmed_in_the_same_bulk():
    """The server's and the status's entries delivered again write nothing (duplicates,
    a rejected transition); decided on memory, requests that change nothing confirm them
    in the bulk: still one round trip, and the document as it was."""
    database = _database()
    store = MongoJobStore(database)
    first = [(i, 10 + i, False) for i in range(len(SAMPLE_EVENTS))]
    store.apply_batch(_items(first))
    before = job_of(database, JOB["_id"])
    trips = store.round_trips
    again = [
        step
        for step in first
        if all(group[0] != "client" for group in groups_of(SAMPLE_EVENTS[step[0]]))
    ]

    outcomes = {outcome for outcome, _error in store.apply_batch(_items(again))}

    assert outcomes == {Outcome.DUPLICATE, Outcome.REJECTED_TRANSITION}
    assert store.round_trips == trips + 1
    assert job_of(database, JOB["_id"]) == before


def test_an_outcome_without_a_write_is_never_taken_from_memory():
    """A redelivered entry is a duplicate by memory too, but only a read may say so: the
    API (or an operator) may have changed the job since."""
    database = _database()
    store = MongoJobStore(database)
    batch = _items([(i, 10 + i, False) for i in range(0, 6)])
    store.apply_batch(batch)
    # The job is rebuilt meanwhile (an operator's replay starts from a fresh document).
    database["job"].replace_one({"_id": JOB["_id"]}, load_job_document())

    outcomes = [outcome for outcome, _error in store.apply_batch(batch)]

    assert Outcome.DUPLICATE not in outcomes
    assert outcomes == [
        outcome for outcome, _error in MongoJobStore(_database()).apply_batch(batch)
    ]


def test_memory_is_distrusted_after_a_miss_and_trusted_again_after_agreeing_reads():
    memory = RememberedJobs()
    memory.remember({"a": {"_id": "a", "status": "IN_PROGRESS"}})
    assert memory.usable("a") is not None

    memory.proved_wrong()
    assert memory.usable("a") is None
    for _ in range(AGREEING_BATCHES - 1):
        memory.compare({"a": {"_id": "a", "status": "IN_PROGRESS"}})
    assert not memory.trusted
    memory.compare({"a": {"_id": "a", "status": "FINISHED_WITH_ERROR"}})  # disagrees
    for _ in range(AGREEING_BATCHES - 1):
        memory.compare({"a": {"_id": "a", "status": "IN_PROGRESS"}})
    assert not memory.trusted
    memory.compare({"a": {"_id": "a", "status": "IN_PROGRESS"}})
    assert memory.trusted


def test_memory_is_bounded_and_drops_the_oldest_jobs_first():
    memory = RememberedJobs(capacity=10)
    memory.remember({str(n): {"_id": str(n)} for n in range(10)})
    memory.remember({"0": {"_id": "0"}})  # used again: now the newest
    memory.remember({"10": {"_id": "10"}})

    assert len(memory) <= 10
    assert memory.usable("0") is not None and memory.usable("10") is not None
    assert memory.usable("1") is None


# ---------------------------------------------------- the property: batches + meddling

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
def test_batches_on_memory_with_meddling_between_them_end_as_one_by_one(plan):
    """Each batch applied with memory, then somebody else changes the job: the outcomes
    and the document are those of the same events applied one at a time."""
    reference = _database()
    one = MongoJobStore(reference, batched=False)
    database = _database()
    store = MongoJobStore(database)

    applied_elsewhere: set[StreamPosition] = set()
    for steps, meddles in plan:
        items = _items(steps)
        expected = [one.apply(event, position) for event, position in items]
        # An entry another writer applied reaches this store only redelivered (claimed).
        redelivered = any(position in applied_elsewhere for _event, position in items)
        got = [outcome for outcome, _error in store.apply_batch(items, redelivered=redelivered)]
        assert got == expected
        assert database["job"].find_one({"_id": JOB["_id"]}) == reference["job"].find_one(
            {"_id": JOB["_id"]}
        )
        for kind, argument in meddles:
            _meddle(reference, kind, argument)
            _meddle(database, kind, argument)
            if kind == "apply":
                applied_elsewhere.update(position for _event, position in _items(argument))
