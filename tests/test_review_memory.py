"""Review of the batched store's memory (worker/remembered.py, commit 4deacaa).

Each test showed one defect found by an adversarial review (all fixed since): the
batched store with memory ended other than applying the same events one at a time
(MongoJobStore(db, batched=False).apply) would. The memory is gone (every batch reads
its jobs); the same sequences must still end as one by one. The property in
tests/test_batched_writes.py searches for the class (clients added, repeated, renamed or
removed between batches, several changes at once).
"""

from __future__ import annotations

import json
from typing import Any

import mongomock_ng

from tests.conftest import load_job_document
from tests.mongo_checks import CheckingDatabase
from tests.support import job_of
from worker.events import parse_entry
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.store import MongoJobStore

JOB = load_job_document()
JOB_ID = JOB["_id"]
CLIENTS = [c["uuid"] for c in JOB["clients_info"]]


def _database() -> Any:
    database = CheckingDatabase(mongomock_ng.MongoClient()["review_memory"])
    database["job"].insert_one(load_job_document())
    return database


def _server(version: int) -> Any:
    return parse_entry(
        {
            "v": "1",
            "type": "server.metrics",
            "job_id": JOB_ID,
            "metrics": json.dumps({"v": version}),
        }
    )


def _client(uuid: str, version: int) -> Any:
    return parse_entry(
        {
            "v": "1",
            "type": "client.metrics",
            "job_id": JOB_ID,
            "client_uuid": uuid,
            "metrics": json.dumps({"v": version}),
        }
    )


def _status(status: str, **more: str) -> Any:
    return parse_entry({"v": "1", "type": "job.status", "job_id": JOB_ID, "status": status, **more})


def _outcomes(results: list[tuple[Outcome, str]]) -> list[Outcome]:
    return [outcome for outcome, _error in results]


def _both(meddle: Any, batches: list[list[tuple[Any, StreamPosition]]]) -> tuple[Any, Any]:
    """Apply ``batches`` with memory and one by one, ``meddle`` (on both databases)
    between the first and the second; return (got, expected) outcomes of the last."""
    database, reference = _database(), _database()
    store = MongoJobStore(database)
    one = MongoJobStore(reference, batched=False)
    got = expected = None
    for number, items in enumerate(batches):
        if number == 1:
            meddle(database)
            meddle(reference)
        expected = [one.apply(event, position) for event, position in items]
        got = _outcomes(store.apply_batch(items))
    return (got, job_of(database, JOB_ID)), (expected, job_of(reference, JOB_ID))


def test_a_client_duplicated_between_batches_relabels_its_applied_writes_duplicate():
    """A client element duplicated (same uuid) since memory was taken: its pinned writes
    matched, but a settle triggered by another miss could not find memory's one-element
    state and decided them again as duplicates (fixed: the pin holds the whole set of
    uuids, each once)."""

    def meddle(database: Any) -> None:
        jobs = database["job"]
        element = jobs.find_one({"_id": JOB_ID})["clients_info"][0]
        # The API (or an operator) adds a second element with the same uuid, and sets the
        # status (so the batch's status-pinned server write misses and a settle runs).
        jobs.update_one(
            {"_id": JOB_ID},
            {
                "$push": {"clients_info": dict(element, _id="copy")},
                "$set": {"status": "IN_PROGRESS"},
            },
        )

    first = [
        (_client(CLIENTS[0], 1), StreamPosition(10, 0)),
        (_client(CLIENTS[1], 1), StreamPosition(11, 0)),
        (_server(1), StreamPosition(12, 0)),
    ]
    second = [
        (_client(CLIENTS[0], 2), StreamPosition(20, 0)),
        (_client(CLIENTS[0], 3), StreamPosition(21, 0)),
        (_server(2), StreamPosition(22, 0)),
    ]
    (got, got_document), (expected, expected_document) = _both(meddle, [first, second])

    assert got == expected
    assert got_document == expected_document


def test_a_dry_run_batch_on_memory_reports_what_another_writer_already_applied():
    """apply_batch(dry_run=True) decided writes on remembered state with nothing to check
    them: a snapshot another worker superseded meanwhile was reported applied, one by one
    says duplicate (fixed: a dry run always reads)."""

    def meddle(database: Any) -> None:  # another worker applies a newer server snapshot
        MongoJobStore(database, batched=False).apply(_server(9), StreamPosition(30, 0))

    database, reference = _database(), _database()
    store = MongoJobStore(database)
    one = MongoJobStore(reference, batched=False)
    first = [
        (_server(1), StreamPosition(10, 0)),
        (_client(CLIENTS[0], 1), StreamPosition(11, 0)),
        (_client(CLIENTS[1], 1), StreamPosition(12, 0)),
    ]
    for event, position in first:
        one.apply(event, position)
    store.apply_batch(first)
    meddle(database)
    meddle(reference)

    later = [
        (_server(2), StreamPosition(20, 0)),
        (_client(CLIENTS[0], 2), StreamPosition(21, 0)),
        (_client(CLIENTS[1], 2), StreamPosition(22, 0)),
    ]
    expected = [one.apply(event, position, dry_run=True) for event, position in later]
    got = _outcomes(store.apply_batch(later, dry_run=True))

    assert got == expected
