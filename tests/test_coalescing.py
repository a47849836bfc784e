"""Coalescing: an older snapshot of a target is `coalesced` only when a newer one in its
batch took effect (applied, or already there); otherwise it shares the newer one's fate
(kept pending with it, dead-lettered with it). So an entry's outcome does not depend on
how the stream is cut into batches: batches of 1, 7 and 1,000 end every entry alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import fakeredis
import mongomock_ng
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import WriteError

from tests.mongo_checks import CheckingDatabase
from tests.support import DEAD, GROUP, STREAM, WithJobCollection, job_of
from tests.support import settings as worker_settings
from worker.consumer import Worker
from worker.observers import BatchObserver, Settled

STORED = "stored-job"
MISSING = "missing-job"  # the API never stores it: unknown_job
POISONED = "poisoned-job"  # stored, but MongoDB refuses every write to it: store_error
CLIENTS = ["c0", "c1"]
STRANGER = "c-unknown"  # no job has this client: unknown_client


def _job(job_id: str) -> dict[str, Any]:
    return {
        "_id": job_id,
        "status": "NOT_STARTED",
        "clients_info": [{"uuid": uuid, "metrics": None} for uuid in CLIENTS],
    }


class RefusingCollection:
    """Refuses every write that would change the poisoned job, as a collection validator
    would (an update that matches nothing is not refused)."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def update_one(self, query: dict[str, Any], update: Any, **kwargs: Any) -> Any:
        if query.get("_id") == POISONED and self.collection.find_one(query) is not None:
            raise WriteError("Document failed validation", 121, {"code": 121})
        return self.collection.update_one(query, update, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collection, name)


class LastOutcome(BatchObserver):
    """Each entry's outcome on its last delivery."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def batch_settled(self, results: Sequence[Settled], seconds: float) -> None:
        for item, outcome in results:
            self.outcomes[item.entry.id] = outcome.value


def _fresh_database() -> Any:
    database = CheckingDatabase(mongomock_ng.MongoClient()["coalescing"])
    for job_id in (STORED, POISONED):
        database["job"].insert_one(_job(job_id))
    return database


def _run(entries: list[dict[str, str]], batch_size: int) -> tuple[Any, Any, Any]:
    """Every entry published with a fixed ID and drained until nothing is pending
    (max_deliveries=2, retried at once); (last outcome by ID, dead letters by origin ID,
    the stored documents)."""
    client = fakeredis.FakeRedis()
    database = _fresh_database()
    observer = LastOutcome()
    worker = Worker(
        client,
        WithJobCollection(database, RefusingCollection(database["job"])),  # type: ignore[arg-type]
        worker_settings(batch_size=batch_size, max_deliveries=2, retry_idle_ms=1),
        observers=[observer],
    )
    for index, fields in enumerate(entries):
        client.xadd(STREAM, fields, id=f"{1_700_000_000_000 + index}-0")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # a drain retries one batch of its own, once idle
        worker.drain()
        if not int(client.xpending(STREAM, GROUP)["pending"]):
            break
        time.sleep(0.002)  # retry_idle_ms
    assert int(client.xpending(STREAM, GROUP)["pending"]) == 0
    letters = {
        fields[b"origin_id"].decode(): fields[b"dead_reason"].decode()
        for _id, fields in client.xrange(DEAD)
    }
    documents = [job_of(database, job_id) for job_id in (STORED, POISONED)]
    return observer.outcomes, letters, documents


def _snapshot(job_id: str, index: int) -> dict[str, str]:
    metrics = json.dumps({"host_type": "server", "rounds": {str(index): {}}})
    return {"v": "1", "type": "server.metrics", "job_id": job_id, "metrics": metrics}


def test_older_snapshots_of_a_job_not_stored_yet_are_dead_lettered_with_the_newest():
    """The repro of issue 20: a batch of 1,000 used to acknowledge the two older ones as
    coalesced, and only the newest reached the dead letters."""
    entries = [_snapshot(MISSING, index) for index in range(3)]
    for batch_size in (1, 1000):
        outcomes, letters, _documents = _run(entries, batch_size)
        assert sorted(outcomes.values()) == ["unknown_job"] * 3, batch_size
        assert sorted(letters.values()) == ["unknown_job"] * 3, batch_size


def test_older_snapshots_are_coalesced_once_the_newest_is_applied():
    entries = [_snapshot(STORED, index) for index in range(3)]
    outcomes, letters, (stored, _poisoned) = _run(entries, 1000)
    assert list(outcomes.values()) == ["coalesced", "coalesced", "applied"]
    assert letters == {}
    assert json.loads(stored["server_metrics"])["rounds"] == {"2": {}}


def test_older_snapshots_of_a_refused_job_share_its_store_error():
    entries = [_snapshot(POISONED, index) for index in range(3)]
    outcomes, letters, _documents = _run(entries, 1000)
    assert list(outcomes.values()) == ["store_error"] * 3
    assert sorted(letters.values()) == ["store_error"] * 3


# ------------------------------------------------ the property: any cut into batches

_jobs = st.sampled_from([STORED, MISSING, POISONED])
_clients = st.sampled_from([*CLIENTS, STRANGER])
_round = st.integers(0, 3)


def _server(job_id: str, rounds: int, finishes: bool) -> dict[str, str]:
    metrics: dict[str, Any] = {"host_type": "server", "rounds": {str(rounds): {}}}
    if finishes:
        metrics["fit_end"] = "2024-11-20 14:00:01"
    return {"v": "1", "type": "server.metrics", "job_id": job_id, "metrics": json.dumps(metrics)}


def _client(job_id: str, uuid: str, rounds: int) -> dict[str, str]:
    metrics = json.dumps({"host_type": "client", "rounds": {str(rounds): {}}})
    return {
        "v": "1",
        "type": "client.metrics",
        "job_id": job_id,
        "client_uuid": uuid,
        "metrics": metrics,
    }


def _heartbeat(job_id: str, uuid: str | None) -> dict[str, str]:
    fields = {"v": "1", "type": "host.heartbeat", "job_id": job_id}
    if uuid is None:
        return {**fields, "host_type": "server"}
    return {**fields, "host_type": "client", "client_uuid": uuid}


def _status(job_id: str, status: str) -> dict[str, str]:
    return {"v": "1", "type": "job.status", "job_id": job_id, "status": status}


_entry = st.one_of(
    st.builds(_server, _jobs, _round, st.booleans()),
    st.builds(_client, _jobs, _clients, _round),
    st.builds(_heartbeat, _jobs, st.one_of(st.none(), _clients)),
    st.builds(_status, _jobs, st.sampled_from(["IN_PROGRESS", "FINISHED_WITH_ERROR"])),
)

# Outcomes that say "what this entry carries is in the document": an older snapshot is
# coalesced in a large batch where, alone, it is applied (or found already there).
_TOOK_EFFECT = {"applied", "duplicate", "coalesced"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, min_size=1, max_size=30))
def test_batches_of_1_7_and_1000_end_every_entry_alike(entries):
    runs = {size: _run(entries, size) for size in (1, 7, 1000)}
    alone_outcomes, alone_letters, alone_documents = runs[1]
    for size, (outcomes, letters, documents) in runs.items():
        assert letters == alone_letters, size
        assert documents == alone_documents, size
        for entry_id, outcome in outcomes.items():
            alone = alone_outcomes[entry_id]
            if "coalesced" in (outcome, alone):
                assert {outcome, alone} <= _TOOK_EFFECT, (size, entry_id, outcome, alone)
            else:
                assert outcome == alone, (size, entry_id, outcome, alone)
        assert set(outcomes) == set(alone_outcomes)
