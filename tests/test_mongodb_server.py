"""Against a real MongoDB only (``./dev test-mongodb URI``): failpoints and server refusals.

Skipped without ``FLORIST_TEST_MONGODB_URI``. The failpoint tests need a server
started with ``--setParameter enableTestCommands=1`` (they are skipped, saying so,
when ``configureFailPoint`` is refused). They make the server itself raise what an
overloaded, restarting or misconfigured deployment raises, during a real drain:

* overload (462 with ``SystemOverloadedError``/``RetryableError``), a stepdown (189),
  an authentication failure (18) and a revoked role (13): nothing lost, nothing
  dead-lettered, the drain finishes once the failpoint is off;
* a document validation failure (121) on one write: that entry alone is
  ``store_error`` and dead-lettered;
* a write concern error that no retry cures (100): the drain stops with
  :class:`worker.errors.Misconfigured`, acknowledging nothing.

The update-shape rules of tests/mongo_checks.py are also checked against the server
itself: each update the effects module builds is accepted, and each shape the checker
refuses is refused by the server too.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo.errors import OperationFailure, WriteError

from tests.mongo_checks import UpdateShapeError, check_update_shape
from tests.support import STREAM, dead_letters, job_of, make_worker, pending_of
from worker.errors import Misconfigured

URI = os.environ.get("FLORIST_TEST_MONGODB_URI")
pytestmark = pytest.mark.skipif(
    not URI, reason="no real MongoDB: set FLORIST_TEST_MONGODB_URI (./dev test-mongodb URI)"
)
JOB = "job-real"


@pytest.fixture
def admin() -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(URI)
    try:
        client.admin.command(
            "configureFailPoint", "failCommand", mode="off"
        )  # also proves test commands are on
    except OperationFailure as error:
        client.close()
        pytest.skip(f"the server refuses configureFailPoint (enableTestCommands=1?): {error}")
    try:
        yield client.admin
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
        client.close()


def _fail(admin: Any, times: int, **data: Any) -> None:
    admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": times},
        data={"failCommands": ["update"], **data},
    )


def _setup(redis_client: Any, database: Any) -> None:
    for job in (JOB, "other"):
        database["job"].insert_one({"_id": job, "status": "NOT_STARTED", "clients_info": []})
        redis_client.xadd(
            STREAM, {"v": "1", "type": "job.status", "job_id": job, "status": "IN_PROGRESS"}
        )
        redis_client.xadd(
            STREAM,
            {"v": "1", "type": "server.metrics", "job_id": job, "metrics": json.dumps({"j": job})},
        )


@pytest.mark.parametrize(
    ("code", "labels"),
    [
        (462, ["SystemOverloadedError", "RetryableError", "NoWritesPerformed"]),
        (189, []),
        (18, []),
        (13, []),
    ],
    ids=["overload", "stepdown", "authentication", "revoked-role"],
)
def test_server_side_outages_lose_nothing(admin, fake_redis, database, code, labels):
    _setup(fake_redis, database)
    _fail(admin, 4, errorCode=code, errorLabels=labels)

    counts = make_worker(fake_redis, database, max_deliveries=1).drain()

    assert counts == {"applied": 4}
    assert dead_letters(fake_redis) == []
    assert pending_of(fake_redis) == 0


def test_a_validation_failure_dead_letters_that_entry_only(admin, fake_redis, database):
    _setup(fake_redis, database)
    _fail(admin, 1, errorCode=121, errmsg="Document failed validation")

    counts = make_worker(fake_redis, database, max_deliveries=1).drain()

    assert counts == {"store_error": 1, "applied": 3}
    [letter] = dead_letters(fake_redis)
    assert letter["dead_reason"] == "store_error" and "121" in letter["dead_error"]


def test_an_unsatisfiable_write_concern_stops_the_worker(admin, fake_redis, database):
    _setup(fake_redis, database)
    _fail(admin, 100, writeConcernError={"code": 100, "errmsg": "Not enough data-bearing nodes"})

    with pytest.raises(Misconfigured, match="write concern"):
        make_worker(fake_redis, database).drain()
    assert dead_letters(fake_redis) == []


def test_an_outage_that_ends_mid_drain_is_waited_out(admin, fake_redis, database):
    _setup(fake_redis, database)
    admin.command(
        "configureFailPoint",
        "failCommand",
        mode="alwaysOn",
        data={"failCommands": ["update"], "errorCode": 91},
    )
    timer = threading.Timer(
        1.0, lambda: admin.command("configureFailPoint", "failCommand", mode="off")
    )
    timer.start()
    began = time.monotonic()
    try:
        counts = make_worker(fake_redis, database).drain()
    finally:
        timer.cancel()
    assert counts == {"applied": 4} and time.monotonic() - began >= 0.9
    assert job_of(database, "other")["status"] == "IN_PROGRESS"


SHAPES_THE_CHECKER_REFUSES = [
    ({"$set": {"clients_info.$[c].metrics": "x"}}, [{"c.uuid": "u"}, {"d.uuid": "u"}]),
    ({"$set": {"clients_info.$[Client].metrics": "x"}}, [{"Client.uuid": "u"}]),
    ({"$set": {"clients_info.$[c].metrics": "x"}}, [{"c.uuid": "u"}, {"c.uuid": "v"}]),
    ({"$set": {"a": 1}, "$unset": {"a": ""}}, None),
    ({"$set": {}}, None),
]


@pytest.mark.parametrize(("update", "array_filters"), SHAPES_THE_CHECKER_REFUSES)
def test_the_server_refuses_what_the_shape_checker_refuses(database, update, array_filters):
    database["job"].insert_one({"_id": JOB, "clients_info": [{"uuid": "u"}], "a": 0})
    with pytest.raises(UpdateShapeError):
        check_update_shape({"_id": JOB}, update, array_filters)
    raw = database["job"]._collection  # past the checking wrapper, straight to the server
    with pytest.raises((WriteError, OperationFailure)):
        raw.update_one({"_id": JOB}, update, array_filters=array_filters)


def test_a_batch_on_the_real_server_leaves_what_one_by_one_leaves_on_mongomock(database):
    """bulk_write with array_filters (which mongomock-ng cannot run: the store emulates
    it there) against the server itself, a repeated client uuid included."""
    import mongomock_ng

    from tests.conftest import load_job_document, load_sample_entries
    from worker.events import parse_entry
    from worker.positions import StreamPosition
    from worker.store import MongoJobStore

    job = load_job_document()
    job["clients_info"].append(dict(job["clients_info"][0]))  # a repeated uuid
    items = [
        (parse_entry(fields), StreamPosition(index + 1, 0))
        for index, fields in enumerate(load_sample_entries())
    ]
    reference = mongomock_ng.MongoClient()["reference"]
    reference["job"].insert_one(dict(job))
    expected = [MongoJobStore(reference, batched=False).apply(e, p) for e, p in items]
    database["job"].insert_one(dict(job))
    store = MongoJobStore(database)

    got = [outcome for outcome, _error in store.apply_batch(items)]

    assert got == expected
    assert store.round_trips == 2
    assert job_of(database, job["_id"]) == reference["job"].find_one({"_id": job["_id"]})
