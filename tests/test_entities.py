"""worker.entities: the Job/ClientInfo models and their single-document updates."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import math
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.database import Database
from pymongo.results import UpdateResult

from tests.async_mongo import AsyncCollectionAdapter, AsyncCursorAdapter, open_async_database
from worker.entities import (
    JOB_COLLECTION,
    Client,
    ClientInfo,
    ConfigParser,
    Job,
    JobStatus,
    Model,
    UpdateNotApplied,
    assert_updated_successfully,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_async(database: Database[Any]) -> Callable[[Callable[[Any], Awaitable[T]]], T]:
    """Run ``test(async_db)`` in a fresh event loop; ``async_db`` views ``database``'s data."""

    def run(test: Callable[[Any], Awaitable[T]]) -> T:
        async def main() -> T:
            async with open_async_database(database) as async_db:
                return await test(async_db)

        return asyncio.run(main())

    return run


def stored(database: Database[Any], job_id: str) -> dict[str, Any]:
    document: dict[str, Any] | None = database[JOB_COLLECTION].find_one({"_id": job_id})
    assert document is not None, f"job {job_id} is not in the database"
    return document


def saved_job(database: Database[Any], document: dict[str, Any]) -> Job:
    database[JOB_COLLECTION].insert_one(copy.deepcopy(document))
    return Job(**document)


def strict_loads(text: str) -> Any:
    """json.loads that refuses the bare NaN/Infinity tokens JSON.parse would choke on."""

    def refuse(token: str) -> Any:
        raise ValueError(f"bare {token} in metrics text")

    return json.loads(text, parse_constant=refuse)


NON_FINITE_METRICS = {
    "host_type": "server",
    "rounds": {"1": {"fit_loss": math.nan, "best": math.inf, "worst": -math.inf, "acc": 0.5}},
}
NON_FINITE_EXPECTED = {
    "host_type": "server",
    "rounds": {"1": {"fit_loss": "NaN", "best": "Infinity", "worst": "-Infinity", "acc": 0.5}},
}


# --- enums and models ---------------------------------------------------------------------


def test_enum_lists() -> None:
    assert Model.list() == ["MNIST"]
    assert Client.list() == ["MNIST"]
    assert ConfigParser.list() == ["BASIC"]
    assert JobStatus.list() == [
        "NOT_STARTED",
        "IN_PROGRESS",
        "FINISHED_WITH_ERROR",
        "FINISHED_SUCCESSFULLY",
    ]


@pytest.mark.parametrize("model", [Job, ClientInfo])
def test_documented_example_is_valid(model: type[Job] | type[ClientInfo]) -> None:
    example = model.model_json_schema()["example"]
    instance = model.model_validate(example)
    assert instance.model_dump(by_alias=True, mode="json") == example


def test_job_populates_by_field_name_and_by_alias() -> None:
    assert Job(id="by-name").id == "by-name"
    assert Job(**{"_id": "by-alias"}).id == "by-alias"
    info = {"client": "MNIST", "service_address": "a", "data_path": "d"}
    info |= {"redis_host": "h", "redis_port": "1"}
    assert ClientInfo(id="by-name", **info).id == "by-name"
    assert ClientInfo(**{"_id": "by-alias"}, **info).id == "by-alias"


def test_default_ids_are_fresh_uuid4_text() -> None:
    first, second = Job(), Job()
    assert first.id != second.id
    assert uuid.UUID(first.id).version == 4
    info = ClientInfo(
        client=Client.MNIST, service_address="a", data_path="d", redis_host="h", redis_port="1"
    )
    assert uuid.UUID(info.id).version == 4


def test_job_defaults() -> None:
    job = Job()
    assert job.status is JobStatus.NOT_STARTED
    assert job.clients_info is None
    assert job.error_message is None
    assert job.server_metrics is None


def test_job_loads_the_sample_document(job_document: dict[str, Any]) -> None:
    job = Job(**job_document)
    assert job.id == job_document["_id"]
    assert job.model is Model.MNIST
    assert job.config_parser is ConfigParser.BASIC
    assert job.clients_info is not None
    assert [c.uuid for c in job.clients_info] == [c["uuid"] for c in job_document["clients_info"]]
    assert job.clients_info[0].client is Client.MNIST
    assert job.to_document() == job_document | {"error_message": None}


def test_job_loads_a_document_with_worker_bookkeeping(job_document: dict[str, Any]) -> None:
    document = copy.deepcopy(job_document)
    document["server_metrics_position"] = [1700000000000, 3]
    document["status_position"] = "1700000000000-4"
    for element in document["clients_info"]:
        element["metrics_position"] = [1700000000000, 7]
    job = Job(**document)
    assert job.id == document["_id"]
    assert "server_metrics_position" not in job.to_document()


def test_job_rejects_an_unknown_status(job_document: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="status"):
        Job(**(job_document | {"status": "SOMEWHERE"}))


# --- assert_updated_successfully ----------------------------------------------------------


def update_result(raw: dict[str, Any] | None) -> UpdateResult:
    return UpdateResult(raw, acknowledged=True)


@pytest.mark.parametrize(
    "raw",
    [
        {"n": 1, "nModified": 1, "ok": 1.0},
        {"n": 1, "nModified": 0, "ok": 1},
    ],
)
def test_assert_updated_successfully_accepts(raw: dict[str, Any]) -> None:
    assert_updated_successfully(update_result(raw))


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ({"n": 0, "nModified": 0, "ok": 1}, "n=0"),
        ({"n": 2, "nModified": 2, "ok": 1}, "n=2"),
        ({"n": 1, "nModified": 1, "ok": 0}, "ok=0"),
        ({"n": 1, "nModified": 2, "ok": 1}, "nModified=2"),
        ({"n": 1, "ok": 1}, "nModified=None"),
    ],
)
def test_assert_updated_successfully_refuses(raw: dict[str, Any], shown: str) -> None:
    with pytest.raises(UpdateNotApplied, match=shown):
        assert_updated_successfully(update_result(raw))


def test_assert_updated_successfully_refuses_a_missing_raw_result() -> None:
    with pytest.raises(UpdateNotApplied):
        assert_updated_successfully(update_result(None))


def test_update_not_applied_is_an_assertion_error() -> None:
    assert issubclass(UpdateNotApplied, AssertionError)


def test_assert_updated_successfully_raises_under_python_o() -> None:
    code = (
        "from pymongo.results import UpdateResult\n"
        "from worker.entities import UpdateNotApplied, assert_updated_successfully\n"
        "assert False, 'asserts are on: -O did not take effect'\n"
        "try:\n"
        "    assert_updated_successfully(UpdateResult({'n': 0, 'nModified': 0, 'ok': 1}, True))\n"
        "except UpdateNotApplied as error:\n"
        "    print('raised:', error)\n"
        "else:\n"
        "    print('did not raise')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("raised:"), completed.stdout
    assert "n=0" in completed.stdout


# --- sync updates -------------------------------------------------------------------------


def test_set_status_sync(database: Database[Any], job_document: dict[str, Any]) -> None:
    job = saved_job(database, job_document)
    job.set_status_sync(JobStatus.IN_PROGRESS, database)
    assert job.status is JobStatus.IN_PROGRESS
    assert stored(database, job.id)["status"] == "IN_PROGRESS"
    job.set_status_sync(JobStatus.IN_PROGRESS, database)  # unchanged (nModified 0) is fine
    assert stored(database, job.id)["status"] == "IN_PROGRESS"


def test_set_status_sync_of_an_unsaved_job_raises(database: Database[Any]) -> None:
    job = Job()
    with pytest.raises(UpdateNotApplied, match="n=0"):
        job.set_status_sync(JobStatus.IN_PROGRESS, database)
    assert job.status is JobStatus.NOT_STARTED
    assert database[JOB_COLLECTION].count_documents({}) == 0


def test_update_touches_only_its_own_job(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = saved_job(database, job_document)
    other = saved_job(database, job_document | {"_id": "other-job"})
    job.set_status_sync(JobStatus.FINISHED_SUCCESSFULLY, database)
    job.set_server_metrics({"host_type": "server"}, database)
    assert stored(database, other.id)["status"] == "NOT_STARTED"
    assert stored(database, other.id)["server_metrics"] is None


def test_set_server_metrics_stores_strict_json(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = saved_job(database, job_document)
    job.set_server_metrics(NON_FINITE_METRICS, database)
    text = stored(database, job.id)["server_metrics"]
    assert isinstance(text, str)
    assert strict_loads(text) == NON_FINITE_EXPECTED
    assert job.server_metrics == text


def test_set_server_metrics_of_an_unsaved_job_raises(database: Database[Any]) -> None:
    job = Job()
    with pytest.raises(UpdateNotApplied):
        job.set_server_metrics({"fit_start": "now"}, database)
    assert job.server_metrics is None


def test_set_client_metrics_sets_only_that_client(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    document = copy.deepcopy(job_document)
    for element in document["clients_info"]:
        element["metrics_position"] = [5, 9]
    job = saved_job(database, document)
    assert job.clients_info is not None
    target, untouched = job.clients_info[1], job.clients_info[0]
    assert target.uuid is not None

    job.set_client_metrics(target.uuid, NON_FINITE_METRICS, database)

    elements = stored(database, job.id)["clients_info"]
    assert strict_loads(elements[1]["metrics"]) == NON_FINITE_EXPECTED
    assert elements[1]["metrics_position"] == [5, 9]  # the rest of the element survives
    assert elements[0]["metrics"] is None
    assert target.metrics == elements[1]["metrics"]
    assert untouched.metrics is None


def test_set_client_metrics_of_an_unknown_uuid_raises_naming_it(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = saved_job(database, job_document)
    unknown = "11111111-2222-4333-8444-555555555555"
    with pytest.raises(UpdateNotApplied, match=unknown):
        job.set_client_metrics(unknown, {"host_type": "client"}, database)
    assert [e["metrics"] for e in stored(database, job.id)["clients_info"]] == [None, None]


@pytest.mark.parametrize(
    "part",
    [
        lambda u: u[:8],  # a prefix
        lambda u: u[9:23],  # a substring
        lambda u: u + "0",  # a longer text starting with it
        lambda u: u.upper(),  # the same uuid in other case
    ],
)
def test_set_client_metrics_matches_the_uuid_exactly(
    database: Database[Any], job_document: dict[str, Any], part: Callable[[str], str]
) -> None:
    job = saved_job(database, job_document)
    stored_uuid = job_document["clients_info"][0]["uuid"]
    almost = part(stored_uuid)
    with pytest.raises(UpdateNotApplied, match=almost):
        job.set_client_metrics(almost, {"host_type": "client"}, database)
    assert [e["metrics"] for e in stored(database, job.id)["clients_info"]] == [None, None]


def test_set_client_metrics_of_an_unsaved_job_raises(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = Job(**job_document)
    client_uuid = job_document["clients_info"][0]["uuid"]
    with pytest.raises(UpdateNotApplied, match=client_uuid):
        job.set_client_metrics(client_uuid, {"host_type": "client"}, database)
    assert job.clients_info is not None
    assert job.clients_info[0].metrics is None


# --- async methods ------------------------------------------------------------------------


def test_create_then_find_by_id(
    run_async: Any, database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = Job(**job_document)

    async def scenario(db: Any) -> tuple[str, Job | None]:
        created = await job.create(db)
        return created, await Job.find_by_id(created, db)

    created, found = run_async(scenario)
    assert created == job_document["_id"]
    assert found == job
    document = stored(database, created)
    assert document["status"] == "NOT_STARTED"
    assert document["clients_info"][0]["_id"] == "client-info-0"


def test_create_of_a_new_job_returns_its_fresh_id(run_async: Any, database: Database[Any]) -> None:
    job = Job(model=Model.MNIST)
    created = run_async(job.create)
    assert created == job.id
    assert stored(database, created)["model"] == "MNIST"


def test_find_by_id_of_a_missing_id_is_none(run_async: Any, job_document: dict[str, Any]) -> None:
    async def scenario(db: Any) -> Job | None:
        await Job(**job_document).create(db)
        return await Job.find_by_id("no-such-job", db)

    assert run_async(scenario) is None


def test_find_by_id_loads_a_document_with_bookkeeping(
    run_async: Any, database: Database[Any], job_document: dict[str, Any]
) -> None:
    document = copy.deepcopy(job_document) | {"server_metrics_position": [1, 2]}
    document["clients_info"][0]["metrics_position"] = [3, 4]
    database[JOB_COLLECTION].insert_one(document)
    found = run_async(lambda db: Job.find_by_id(job_document["_id"], db))
    assert found is not None
    assert found.id == job_document["_id"]


def test_find_by_status_honours_status_and_limit(run_async: Any, database: Database[Any]) -> None:
    waiting = [Job(status=JobStatus.NOT_STARTED) for _ in range(3)]
    running = [Job(status=JobStatus.IN_PROGRESS) for _ in range(2)]
    for job in waiting + running:
        database[JOB_COLLECTION].insert_one(job.to_document())

    async def scenario(db: Any) -> tuple[list[Job], list[Job], list[Job]]:
        return (
            await Job.find_by_status(JobStatus.IN_PROGRESS, 10, db),
            await Job.find_by_status(JobStatus.NOT_STARTED, 2, db),
            await Job.find_by_status(JobStatus.FINISHED_WITH_ERROR, 10, db),
        )

    in_progress, not_started, finished = run_async(scenario)
    assert sorted(j.id for j in in_progress) == sorted(j.id for j in running)
    assert len(not_started) == 2
    assert {j.id for j in not_started} <= {j.id for j in waiting}
    assert all(j.status is JobStatus.NOT_STARTED for j in not_started)
    assert finished == []


def test_set_status(run_async: Any, database: Database[Any], job_document: dict[str, Any]) -> None:
    job = saved_job(database, job_document)
    run_async(lambda db: job.set_status(JobStatus.FINISHED_WITH_ERROR, db))
    assert job.status is JobStatus.FINISHED_WITH_ERROR
    assert stored(database, job.id)["status"] == "FINISHED_WITH_ERROR"


def test_set_status_of_an_unsaved_job_raises(run_async: Any) -> None:
    job = Job()
    with pytest.raises(UpdateNotApplied):
        run_async(lambda db: job.set_status(JobStatus.IN_PROGRESS, db))
    assert job.status is JobStatus.NOT_STARTED


def test_set_uuids(run_async: Any, database: Database[Any], job_document: dict[str, Any]) -> None:
    document = copy.deepcopy(job_document)
    document["clients_info"][0]["metrics"] = '{"host_type":"client"}'
    document["clients_info"][0]["metrics_position"] = [1, 1]
    job = saved_job(database, document)
    new_server, new_clients = "server-uuid-2", ["client-uuid-a", "client-uuid-b"]

    run_async(lambda db: job.set_uuids(new_server, new_clients, db))

    saved = stored(database, job.id)
    assert saved["server_uuid"] == new_server
    assert [e["uuid"] for e in saved["clients_info"]] == new_clients
    assert saved["clients_info"][0]["metrics"] == '{"host_type":"client"}'
    assert saved["clients_info"][0]["metrics_position"] == [1, 1]
    assert saved["clients_info"][1]["service_address"] == "localhost:8002"
    assert job.server_uuid == new_server
    assert job.clients_info is not None
    assert [c.uuid for c in job.clients_info] == new_clients


def test_set_uuids_without_clients_info_raises(run_async: Any, database: Database[Any]) -> None:
    job = Job()
    database[JOB_COLLECTION].insert_one(job.to_document())
    with pytest.raises(ValueError, match=r"has 0 clients_info but 2 client uuids"):
        run_async(lambda db: job.set_uuids("s", ["a", "b"], db))
    assert stored(database, job.id)["server_uuid"] is None


@pytest.mark.parametrize("count", [1, 3])
def test_set_uuids_of_another_length_raises(
    run_async: Any, database: Database[Any], job_document: dict[str, Any], count: int
) -> None:
    job = saved_job(database, job_document)
    uuids = [f"u{i}" for i in range(count)]
    with pytest.raises(ValueError, match=rf"has 2 clients_info but {count} client uuids"):
        run_async(lambda db: job.set_uuids("s", uuids, db))
    assert stored(database, job.id)["server_uuid"] == job_document["server_uuid"]
    assert job.server_uuid == job_document["server_uuid"]


def test_set_uuids_refuses_a_stored_clients_info_of_another_length(
    run_async: Any, database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = saved_job(database, job_document)
    database[JOB_COLLECTION].update_one({"_id": job.id}, {"$pop": {"clients_info": 1}})
    with pytest.raises(UpdateNotApplied):
        run_async(lambda db: job.set_uuids("s", ["a", "b"], db))
    assert len(stored(database, job.id)["clients_info"]) == 1
    assert job.server_uuid == job_document["server_uuid"]


def test_set_uuids_of_an_unsaved_job_raises(run_async: Any, job_document: dict[str, Any]) -> None:
    job = Job(**job_document)
    with pytest.raises(UpdateNotApplied):
        run_async(lambda db: job.set_uuids("s", ["a", "b"], db))


# --- the test adapter stays faithful to pymongo's async API --------------------------------


@pytest.mark.parametrize(
    ("adapter", "real"),
    [(AsyncCollectionAdapter, AsyncCollection), (AsyncCursorAdapter, AsyncCursor)],
)
def test_async_adapter_matches_pymongo_async_api(adapter: type, real: type) -> None:
    for name, member in vars(adapter).items():
        if name.startswith("_") and name not in {"__aiter__", "__anext__"}:
            continue
        assert hasattr(real, name), f"{real.__name__} has no {name}"
        assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(
            getattr(real, name)
        ), f"{adapter.__name__}.{name} and {real.__name__}.{name} differ in being a coroutine"
