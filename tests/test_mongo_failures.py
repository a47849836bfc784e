"""MongoDB failures classified as a real server raises them (docs/mongodb-failures.md).

The exception objects below are built the way pymongo builds them from a server's
reply (code, ``errorLabels`` in ``details``, ``errmsg``), so the table is what a
worker meets on a real deployment: outages wait, refusals dead-letter only the
refused entry, misconfiguration stops with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from bson.errors import InvalidDocument
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    DocumentTooLarge,
    ExecutionTimeout,
    InvalidOperation,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WriteConcernError,
    WriteError,
)

from tests.support import (
    STREAM,
    WithJobCollection,
    dead_letters,
    job_of,
    make_worker,
    pending_of,
)
from worker import effects
from worker.errors import Misconfigured
from worker.mongo_failures import Failure, classify
from worker.store import MongoJobStore, StoreRejected

JOB = "job-m"


def _reply(code: int, message: str, labels: tuple[str, ...] = ()) -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": 0, "errmsg": message, "code": code}
    if labels:
        reply["errorLabels"] = list(labels)
    return reply


def operation_failure(code: int, message: str, *labels: str) -> OperationFailure:
    return OperationFailure(message, code, _reply(code, message, labels))


def write_error(code: int, message: str) -> WriteError:
    return WriteError(message, code, {"index": 0, "code": code, "errmsg": message})


def write_concern_error(code: int, message: str, *labels: str) -> WriteConcernError:
    return WriteConcernError(message, code, _reply(code, message, labels))


OUTAGES = {
    "network reset": AutoReconnect("connection reset by peer"),
    "network timeout": NetworkTimeout("timed out"),
    "no primary": ServerSelectionTimeoutError("No replica set members match selector"),
    "pool timeout": WaitQueueTimeoutError("timed out waiting for a connection"),
    "not primary": NotPrimaryError("not primary", _reply(10107, "not primary")),
    "stepped down": operation_failure(189, "primary stepped down"),
    "shutting down": operation_failure(91, "shutdown in progress"),
    "interrupted at shutdown": operation_failure(11600, "interrupted at shutdown"),
    "retryable label": operation_failure(
        1234, "unlisted code, labelled retryable", "RetryableWriteError"
    ),
    "overload 462": operation_failure(
        462, "request rate limit", "SystemOverloadedError", "RetryableError", "NoWritesPerformed"
    ),
    "overload 463": operation_failure(
        463, "server overloaded", "SystemOverloadedError", "RetryableError"
    ),
    "overload label only": operation_failure(2, "busy", "SystemOverloadedError"),
    "time limit": ExecutionTimeout("operation exceeded time limit", 50, _reply(50, "exceeded")),
    "password rotated": operation_failure(18, "Authentication failed."),
    "atlas bad auth": operation_failure(8000, "bad auth : authentication failed"),
    "role revoked": operation_failure(13, "not authorized on florist-server to execute command"),
    "write conflict": write_error(112, "WriteConflict"),
    "write concern timeout": write_concern_error(64, "waiting for replication timed out"),
    "write concern during shutdown": write_concern_error(91, "shutdown in progress"),
}
REFUSALS = {
    "document too large after update": write_error(
        17419, "Resulting document after update is larger than 16777216"
    ),
    "bson object too large": write_error(10334, "BSONObj size is invalid"),
    "validator": write_error(121, "Document failed validation"),
    "bad value": write_error(2, "Cannot apply array updates to non-array element"),
    "client-side too large": DocumentTooLarge("command document too large"),
}
MISCONFIGURED = {
    "unknown write concern tag": write_concern_error(79, "No write concern mode named 'dc3'"),
    "unsatisfiable write concern": write_concern_error(100, "Not enough data-bearing nodes"),
    "w=0 with arrayFilters": ConfigurationError(
        "arrayFilters is unsupported for unacknowledged writes."
    ),
    "w=0 result": InvalidOperation(
        "A value for matched_count is not available when the write is unacknowledged."
    ),
}
UNENCODABLE = {
    "lone surrogate": UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    "invalid document": InvalidDocument("key must not contain '.'"),
}


@pytest.mark.parametrize(
    ("error", "expected"),
    [pytest.param(e, Failure.OUTAGE, id=f"outage: {n}") for n, e in OUTAGES.items()]
    + [pytest.param(e, Failure.REFUSAL, id=f"refusal: {n}") for n, e in REFUSALS.items()]
    + [pytest.param(e, Failure.MISCONFIGURED, id=f"misconf: {n}") for n, e in MISCONFIGURED.items()]
    + [
        pytest.param(e, Failure.UNENCODABLE, id=f"unencodable: {n}") for n, e in UNENCODABLE.items()
    ],
)
def test_each_failure_is_classified_as_a_real_server_raises_it(error, expected):
    assert classify(error) is expected


def test_an_exception_from_elsewhere_is_not_classified():
    assert classify(RuntimeError("x")) is None


# ------------------------------------------------------------ a failing database double


class ScriptedCollection:
    """Raises ``error`` on writes to one job (or every job), ``times`` times."""

    def __init__(self, collection: Any, error: BaseException, job: str | None, times: int) -> None:
        self._collection = collection
        self.error = error
        self.job = job
        self.times = times
        self.raised = 0

    def _maybe_raise(self, query: Any) -> None:
        if self.raised < self.times and (self.job is None or query.get("_id") == self.job):
            self.raised += 1
            raise self.error

    def update_one(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._maybe_raise(query)
        return self._collection.update_one(query, *args, **kwargs)

    def find_one(self, query: Any = None, *args: Any, **kwargs: Any) -> Any:
        self._maybe_raise(query or {})
        return self._collection.find_one(query, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def _jobs(database: Any) -> None:
    for job in (JOB, "other"):
        database["job"].insert_one({"_id": job, "status": "NOT_STARTED", "clients_info": []})


def _publish(client: Any) -> None:
    for job in (JOB, "other"):
        client.xadd(
            STREAM, {"v": "1", "type": "job.status", "job_id": job, "status": "IN_PROGRESS"}
        )
        client.xadd(
            STREAM,
            {"v": "1", "type": "server.metrics", "job_id": job, "metrics": json.dumps({"j": job})},
        )


def _scripted(database: Any, error: BaseException, job: str | None, times: int) -> Any:
    return WithJobCollection(database, ScriptedCollection(database["job"], error, job, times))


@pytest.mark.parametrize("name", sorted(OUTAGES))
def test_an_outage_during_a_drain_loses_nothing_and_dead_letters_nothing(
    fake_redis, database, name
):
    _jobs(database)
    _publish(fake_redis)
    flaky = _scripted(database, OUTAGES[name], None, times=3)

    counts = make_worker(fake_redis, flaky, max_deliveries=1).drain()

    assert counts == {"applied": 4}
    assert dead_letters(fake_redis) == []
    assert pending_of(fake_redis) == 0
    assert flaky.collection.raised == 3
    assert job_of(database, JOB)["status"] == "IN_PROGRESS"


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_refusal_dead_letters_only_the_refused_entries(fake_redis, database, name):
    _jobs(database)
    _publish(fake_redis)
    refusing = _scripted(database, REFUSALS[name], JOB, times=1000)

    counts = make_worker(fake_redis, refusing, max_deliveries=1).drain()

    assert counts == {"store_error": 2, "applied": 2}
    letters = dead_letters(fake_redis)
    assert {letter["job_id"] for letter in letters} == {JOB}
    assert all(letter["dead_reason"] == "store_error" for letter in letters)
    assert all(type(REFUSALS[name]).__name__ in letter["dead_error"] for letter in letters)
    assert json.loads(job_of(database, "other")["server_metrics"]) == {"j": "other"}


@pytest.mark.parametrize("name", sorted(MISCONFIGURED))
def test_misconfiguration_stops_the_drain_with_one_line_and_acknowledges_nothing(
    fake_redis, database, name
):
    _jobs(database)
    _publish(fake_redis)
    broken = _scripted(database, MISCONFIGURED[name], None, times=1000)

    with pytest.raises(Misconfigured) as raised:
        make_worker(fake_redis, broken).drain()

    assert "\n" not in str(raised.value)
    assert "FLORIST_MONGODB_URI" in str(raised.value)
    assert dead_letters(fake_redis) == []
    assert pending_of(fake_redis) == 4  # all delivered, none acknowledged


def test_a_w0_uri_is_refused_at_start(fake_redis):
    import mongomock_ng
    from pymongo.write_concern import WriteConcern

    database = mongomock_ng.MongoClient()["florist"]

    class Unacknowledged:
        def __getitem__(self, name: str) -> Any:
            collection = database[name]
            return _WithWriteConcern(collection, WriteConcern(w=0))

        def __getattr__(self, name: str) -> Any:
            return getattr(database, name)

    with pytest.raises(Misconfigured, match="w=0"):
        make_worker(fake_redis, Unacknowledged()).drain()


class _WithWriteConcern:
    def __init__(self, collection: Any, write_concern: Any) -> None:
        self._collection = collection
        self.write_concern = write_concern

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def test_a_collection_with_a_non_binary_collation_is_refused_at_start(fake_redis, database):
    class Collated:
        def __getitem__(self, name: str) -> Any:
            return _WithOptions(database[name], {"collation": {"locale": "en", "strength": 2}})

        def __getattr__(self, name: str) -> Any:
            return getattr(database, name)

    with pytest.raises(Misconfigured, match="collation"):
        make_worker(fake_redis, Collated()).drain()


class _WithOptions:
    def __init__(self, collection: Any, options: dict[str, Any]) -> None:
        self._collection = collection
        self._options = options

    def options(self) -> dict[str, Any]:
        return self._options

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def _florist_worker() -> str:
    path = Path(sys.executable).with_name("florist-worker")
    if not path.exists():
        pytest.fail(f"the florist-worker command is not installed next to {sys.executable}")
    return str(path)


def test_run_with_w0_exits_1_with_one_line(redis_url, tmp_path):
    environment = {
        **os.environ,
        "FLORIST_REDIS_URL": redis_url,
        "FLORIST_MONGODB_URI": "mongodb://127.0.0.1:1/?w=0",
        "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "FLORIST_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [_florist_worker(), "run"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "w=0" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------- no stall, ever


@pytest.mark.parametrize(
    "stored",
    [["an", "array"], 42, {"a": "document"}, True],
    ids=["array", "number", "document", "boolean"],
)
def test_a_stored_position_of_an_unexpected_type_cannot_stall_the_worker(
    fake_redis, database, stored
):
    database["job"].insert_one(
        {
            "_id": JOB,
            "status": "IN_PROGRESS",
            effects.SERVER_POSITION: stored,
            "clients_info": [{"uuid": "c", effects.CLIENT_POSITION: stored}],
        }
    )
    fake_redis.xadd(STREAM, {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": "{}"})
    fake_redis.xadd(
        STREAM,
        {"v": "1", "type": "client.metrics", "job_id": JOB, "client_uuid": "c", "metrics": "{}"},
    )
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": "x", "status": "IN_PROGRESS"}
    )

    counts = make_worker(fake_redis, database, max_deliveries=1).drain()

    # Each ends in one outcome (applied, or store_error and dead-lettered); nothing waits.
    assert sum(counts.values()) == 3
    assert set(counts) <= {"applied", "store_error", "unknown_job"}
    assert pending_of(fake_redis) == 0


class FrozenCollection:
    """Matches no guarded write and always reads the same document: the stall of a
    document whose stored fields the guard cannot match (e.g. a non-binary collation)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.writes = 0

    def update_one(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1

        class Missed:
            matched_count = 0

        return Missed()

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        return dict(self.document)


class FrozenDatabase:
    def __init__(self, collection: FrozenCollection) -> None:
        self.collection = collection

    def __getitem__(self, name: str) -> FrozenCollection:
        return self.collection


def test_a_guard_that_would_repeat_is_a_refusal_of_that_entry_not_an_outage():
    from worker.events import parse_entry
    from worker.positions import StreamPosition

    cases = [
        (
            {"_id": JOB, "status": "IN_PROGRESS", effects.SERVER_POSITION: None},
            {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": "{}"},
        ),
        (
            {"_id": JOB, "status": "IN_PROGRESS", "clients_info": [{"uuid": "c"}]},
            {
                "v": "1",
                "type": "client.metrics",
                "job_id": JOB,
                "client_uuid": "c",
                "metrics": "{}",
            },
        ),
    ]
    for document, fields in cases:
        collection = FrozenCollection(document)
        store = MongoJobStore(FrozenDatabase(collection))  # type: ignore[arg-type]
        with pytest.raises(StoreRejected, match="does not match the guard"):
            store.apply(parse_entry(fields), StreamPosition(5, 0))
        assert collection.writes == 2  # the first write, then one compare-and-set round


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


def test_a_refused_write_is_dead_lettered_after_its_deliveries_while_the_others_apply(
    real_redis, database
):
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
