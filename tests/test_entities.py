"""worker.entities: the Job/ClientInfo models and their single-document updates."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import math
import re
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
    JOB_COLLECTION_NAME,
    MAX_RECORDS_TO_FETCH,
    Client,
    ClientInfo,
    ConfigParser,
    EntityAssertionError,
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
        ({"n": 0, "nModified": 0, "ok": 1}, "UpdateResult's 'n' is not 1"),
        ({"n": 2, "nModified": 2, "ok": 1}, "UpdateResult's 'n' is not 1"),
        ({"n": 1, "nModified": 1, "ok": 0}, "UpdateResult's 'ok' is not 1"),
        ({"n": 1, "nModified": 2, "ok": 1}, "UpdateResult's 'nModified' is not 1 or 0"),
        ({"n": 1, "ok": 1}, "UpdateResult's 'nModified' is not 1 or 0"),
        ({"nModified": 0, "ok": 1}, "UpdateResult's 'n' is not 1"),
        # FLorist checks n, then nModified, then ok: the first failing one is named.
        ({"n": 0, "nModified": 5, "ok": 0}, "UpdateResult's 'n' is not 1"),
        ({"n": 1, "nModified": 5, "ok": 0}, "UpdateResult's 'nModified' is not 1 or 0"),
    ],
)
def test_assert_updated_successfully_refuses(raw: dict[str, Any], shown: str) -> None:
    result = update_result(raw)
    with pytest.raises(AssertionError, match=re.escape(shown)) as raised:
        assert_updated_successfully(result)
    assert isinstance(raised.value, UpdateNotApplied)
    assert repr(result) in str(raised.value)  # FLorist's message shows the result too


def test_assert_updated_successfully_refuses_a_missing_raw_result() -> None:
    with pytest.raises(UpdateNotApplied, match="raw_result is not a dict"):
        assert_updated_successfully(update_result(None))


def test_update_not_applied_is_an_assertion_error() -> None:
    assert issubclass(UpdateNotApplied, EntityAssertionError)
    assert issubclass(EntityAssertionError, AssertionError)


def test_florist_s_constants() -> None:
    assert JOB_COLLECTION_NAME == JOB_COLLECTION == "job"
    assert MAX_RECORDS_TO_FETCH == 1000


# FLorist's parameter names (florist/api/db/entities.py at the seed's revision): its
# routes and tests pass some of them by keyword.
FLORIST_SIGNATURES = {
    "find_by_id": ["job_id", "database"],
    "find_by_status": ["status", "limit", "database"],
    "create": ["self", "database"],
    "set_uuids": ["self", "server_uuid", "client_uuids", "database"],
    "set_status": ["self", "status", "database"],
    "set_status_sync": ["self", "status", "database"],
    "set_server_metrics": ["self", "server_metrics", "database"],
    "set_client_metrics": ["self", "client_uuid", "client_metrics", "database"],
}


@pytest.mark.parametrize(("name", "parameters"), sorted(FLORIST_SIGNATURES.items()))
def test_florist_s_parameter_names(name: str, parameters: list[str]) -> None:
    assert list(inspect.signature(getattr(Job, name)).parameters) == parameters
    assert inspect.iscoroutinefunction(getattr(Job, name)) == (
        name in {"find_by_id", "find_by_status", "create", "set_uuids", "set_status"}
    )
    assert list(inspect.signature(assert_updated_successfully).parameters) == ["update_result"]


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
        "import asyncio\n"
        "from worker.entities import Job\n"
        "try:\n"
        "    asyncio.run(Job().set_uuids('s', ['a'], None))\n"
        "except AssertionError as error:\n"
        "    print('precondition raised:', error)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("raised:"), completed.stdout
    assert "UpdateResult's 'n' is not 1" in completed.stdout
    assert "precondition raised: self.clients_info and client_uuids" in completed.stdout


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
    with pytest.raises(AssertionError, match=re.escape("UpdateResult's 'n' is not 1")):
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
    assert text == json.dumps(NON_FINITE_EXPECTED)  # json.dumps's layout, strings for NaN
    assert job.server_metrics == text


FINITE_METRICS = [
    {"test-server": 123},
    {"host_type": "server", "rounds": {"1": {"loss": 0.25, "ok": True, "none": None}}},
    {"name": "é ü \u2603", "nested": [1, [2.5, {"a": "b"}]]},
    [{"test-metric-1": 456}, {"test-metric-2": 789}],  # FLorist's own test passes a list
]


@pytest.mark.parametrize("metrics", FINITE_METRICS)
def test_metrics_text_is_exactly_what_json_dumps_writes(
    database: Database[Any], job_document: dict[str, Any], metrics: Any
) -> None:
    job = saved_job(database, job_document)
    client_uuid = job_document["clients_info"][1]["uuid"]
    job.set_server_metrics(metrics, database)
    job.set_client_metrics(client_uuid, metrics, database)
    document = stored(database, job.id)
    assert document["server_metrics"] == json.dumps(metrics) == job.server_metrics
    assert document["clients_info"][1]["metrics"] == json.dumps(metrics)
    assert job.clients_info is not None
    assert job.clients_info[1].metrics == json.dumps(metrics)


def test_set_server_metrics_of_an_unsaved_job_raises(database: Database[Any]) -> None:
    job = Job()
    with pytest.raises(AssertionError, match=re.escape("UpdateResult's 'n' is not 1")):
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


def test_set_client_metrics_updates_every_element_with_that_uuid(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    document = copy.deepcopy(job_document)
    repeated = document["clients_info"][0]["uuid"]
    third = copy.deepcopy(document["clients_info"][0]) | {"_id": "client-info-2"}
    document["clients_info"].append(third)  # uuids: repeated, other, repeated
    job = saved_job(database, document)

    job.set_client_metrics(repeated, {"host_type": "client"}, database)

    elements = stored(database, job.id)["clients_info"]
    text = json.dumps({"host_type": "client"})
    assert [e["metrics"] for e in elements] == [text, None, text]
    assert job.clients_info is not None
    assert [c.metrics for c in job.clients_info] == [text, None, text]


def test_set_client_metrics_uses_array_filters_not_the_positional_operator(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    # On a real MongoDB `clients_info.$.metrics` sets only the first matching element;
    # the update must name every match through an array filter.
    sent: list[tuple[Any, Any, Any]] = []

    class Recording:
        def __init__(self, collection: Any) -> None:
            self.collection = collection

        def update_one(self, query: Any, update: Any, **kwargs: Any) -> Any:
            sent.append((query, update, kwargs.get("array_filters")))
            return self.collection.update_one(query, update, **kwargs)

    class RecordingDatabase:
        def __getitem__(self, name: str) -> Recording:
            return Recording(database[name])

    job = saved_job(database, job_document)
    client_uuid = job_document["clients_info"][0]["uuid"]
    job.set_client_metrics(client_uuid, {"a": 1}, RecordingDatabase())  # type: ignore[arg-type]
    [(query, update, array_filters)] = sent
    assert query == {"_id": job.id, "clients_info.uuid": client_uuid}
    assert update == {"$set": {"clients_info.$[client].metrics": json.dumps({"a": 1})}}
    assert array_filters == [{"client.uuid": client_uuid}]


def test_set_client_metrics_of_an_unknown_uuid_raises_florist_s_message(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = saved_job(database, job_document)
    unknown = "11111111-2222-4333-8444-555555555555"
    known = [c["uuid"] for c in job_document["clients_info"]]
    message = f"client uuid {unknown} is not in clients_info ({known})"
    with pytest.raises(AssertionError, match=re.escape(message)) as raised:
        job.set_client_metrics(unknown, {"host_type": "client"}, database)
    assert isinstance(raised.value, EntityAssertionError)
    assert [e["metrics"] for e in stored(database, job.id)["clients_info"]] == [None, None]


def test_set_client_metrics_without_clients_info_raises(database: Database[Any]) -> None:
    job = Job()
    database[JOB_COLLECTION].insert_one(job.to_document())
    with pytest.raises(
        AssertionError, match=re.escape("client uuid u is not in clients_info (None)")
    ):
        job.set_client_metrics("u", {}, database)


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
    with pytest.raises(AssertionError, match=re.escape(f"client uuid {almost} is not in")):
        job.set_client_metrics(almost, {"host_type": "client"}, database)
    assert [e["metrics"] for e in stored(database, job.id)["clients_info"]] == [None, None]


def test_set_client_metrics_of_an_unsaved_job_raises(
    database: Database[Any], job_document: dict[str, Any]
) -> None:
    job = Job(**job_document)
    client_uuid = job_document["clients_info"][0]["uuid"]
    with pytest.raises(AssertionError, match=re.escape("UpdateResult's 'n' is not 1")):
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


def insert_jobs(database: Database[Any], count: int, status: JobStatus) -> list[Job]:
    jobs = [Job(status=status) for _ in range(count)]
    for job in jobs:
        database[JOB_COLLECTION].insert_one(job.to_document())
    return jobs


def test_find_by_status_limit_zero_gives_no_job(run_async: Any, database: Database[Any]) -> None:
    # FLorist calls Motor's to_list(0), which gives []; MongoDB's limit(0) would mean "all".
    insert_jobs(database, 3, JobStatus.IN_PROGRESS)
    assert run_async(lambda db: Job.find_by_status(JobStatus.IN_PROGRESS, 0, db)) == []


@pytest.mark.parametrize("limit", [-1, -2, -1000])
def test_find_by_status_negative_limit_raises_as_in_florist(
    run_async: Any, database: Database[Any], limit: int
) -> None:
    # Motor's to_list(-n) raises ValueError; MongoDB's limit(-n) would return one batch.
    insert_jobs(database, 3, JobStatus.IN_PROGRESS)
    with pytest.raises(ValueError, match="length must be non-negative"):
        run_async(lambda db: Job.find_by_status(JobStatus.IN_PROGRESS, limit, db))


@pytest.mark.parametrize("limit", [1.5, "3", None])
def test_find_by_status_limit_that_is_no_int_raises_type_error(
    run_async: Any, database: Database[Any], limit: Any
) -> None:
    with pytest.raises(TypeError, match="length must be an int"):
        run_async(lambda db: Job.find_by_status(JobStatus.IN_PROGRESS, limit, db))


@pytest.mark.parametrize(("limit", "expected"), [(1, 1), (3, 3), (4, 3), (MAX_RECORDS_TO_FETCH, 3)])
def test_find_by_status_positive_limits(
    run_async: Any, database: Database[Any], limit: int, expected: int
) -> None:
    insert_jobs(database, 3, JobStatus.FINISHED_SUCCESSFULLY)
    insert_jobs(database, 2, JobStatus.IN_PROGRESS)
    found = run_async(lambda db: Job.find_by_status(JobStatus.FINISHED_SUCCESSFULLY, limit, db))
    assert len(found) == expected
    assert all(job.status is JobStatus.FINISHED_SUCCESSFULLY for job in found)


def test_find_by_status_takes_the_status_value_too(run_async: Any, database: Database[Any]) -> None:
    insert_jobs(database, 2, JobStatus.IN_PROGRESS)
    assert len(run_async(lambda db: Job.find_by_status("IN_PROGRESS", 10, db))) == 2


def test_set_status(run_async: Any, database: Database[Any], job_document: dict[str, Any]) -> None:
    job = saved_job(database, job_document)
    run_async(lambda db: job.set_status(JobStatus.FINISHED_WITH_ERROR, db))
    assert job.status is JobStatus.FINISHED_WITH_ERROR
    assert stored(database, job.id)["status"] == "FINISHED_WITH_ERROR"


def test_set_status_of_an_unsaved_job_raises(run_async: Any) -> None:
    job = Job()
    with pytest.raises(AssertionError, match=re.escape("UpdateResult's 'n' is not 1")):
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
    message = "self.clients_info and client_uuids must have the same length (None!=2)."
    with pytest.raises(AssertionError, match=re.escape(message)) as raised:
        run_async(lambda db: job.set_uuids("s", ["a", "b"], db))
    assert isinstance(raised.value, EntityAssertionError)  # FLorist's route answers 400
    assert stored(database, job.id)["server_uuid"] is None


@pytest.mark.parametrize("count", [1, 3])
def test_set_uuids_of_another_length_raises(
    run_async: Any, database: Database[Any], job_document: dict[str, Any], count: int
) -> None:
    job = saved_job(database, job_document)
    uuids = [f"u{i}" for i in range(count)]
    message = f"self.clients_info and client_uuids must have the same length (2!={count})."
    with pytest.raises(AssertionError, match=re.escape(message)):
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
    with pytest.raises(AssertionError, match=re.escape("UpdateResult's 'n' is not 1")):
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


# --- FLorist's own entity test scenarios (florist/tests/integration/api/db/test_entities.py) ---


def florist_test_job() -> Job:
    """A job shaped like the one FLorist's entity tests build (no ``_id``: a new one)."""
    return Job(
        **{
            "status": "NOT_STARTED",
            "model": "MNIST",
            "server_address": "test-server-address",
            "server_config": json.dumps({"n_server_rounds": 2, "batch_size": 8}),
            "config_parser": "BASIC",
            "redis_host": "test-redis-host",
            "redis_port": "test-redis-port",
            "server_uuid": "test-server-uuid",
            "server_metrics": "test-server-metrics",
            "clients_info": [
                {
                    "client": "MNIST",
                    "service_address": f"test-service-address-{i}",
                    "data_path": f"test-data-path-{i}",
                    "redis_host": f"test-redis-host-{i}",
                    "redis_port": f"test-redis-port-{i}",
                    "uuid": f"test-client-uuids-{i}",
                    "metrics": f"test-client-metrics-{i}",
                }
                for i in (1, 2)
            ],
        }
    )


def test_florist_scenarios_round_trip(run_async: Any, database: Database[Any]) -> None:
    job = florist_test_job()

    async def scenario(db: Any) -> list[Job | None]:
        created = await job.create(db)
        assert isinstance(created, str)
        seen = [await Job.find_by_id(created, db)]
        await job.set_uuids("a-different-server-uuid", ["c-1", "c-2"], db)
        seen.append(await Job.find_by_id(created, db))
        await job.set_status(JobStatus.IN_PROGRESS, db)
        seen.append(await Job.find_by_id(created, db))
        job.set_status_sync(JobStatus.FINISHED_SUCCESSFULLY, database)
        job.set_server_metrics({"test-server": 123}, database)
        job.set_client_metrics("c-2", [{"test-metric-1": 456}, {"test-metric-2": 789}], database)
        seen.append(await Job.find_by_id(created, db))
        seen += await Job.find_by_status(JobStatus.FINISHED_SUCCESSFULLY, 10, db)
        assert await Job.find_by_status(JobStatus.NOT_STARTED, 10, db) == []
        assert await Job.find_by_id("does-not-exist", db) is None
        return seen

    first, after_uuids, after_status, last, found = run_async(scenario)
    assert first is not None and first.server_uuid == "test-server-uuid"
    assert after_uuids is not None and after_uuids.server_uuid == "a-different-server-uuid"
    assert after_uuids.clients_info is not None
    assert [c.uuid for c in after_uuids.clients_info] == ["c-1", "c-2"]
    assert after_status is not None and after_status.status is JobStatus.IN_PROGRESS
    assert last == job == found
    assert last is not None and last.server_metrics == json.dumps({"test-server": 123})
    assert last.clients_info is not None
    assert last.clients_info[1].metrics == json.dumps(
        [{"test-metric-1": 456}, {"test-metric-2": 789}]
    )
    assert last.clients_info[0].metrics == "test-client-metrics-1"


@pytest.mark.parametrize(
    "call",
    [
        lambda job, db, sync: job.set_uuids("s", ["a", "b"], db),
        lambda job, db, sync: job.set_status(JobStatus.IN_PROGRESS, db),
        lambda job, db, sync: _now(job.set_status_sync(JobStatus.IN_PROGRESS, sync)),
        lambda job, db, sync: _now(job.set_server_metrics({"test-server": 123}, sync)),
        lambda job, db, sync: _now(job.set_client_metrics("test-client-uuids-1", [{}], sync)),
    ],
)
def test_florist_scenarios_fail_update_result(
    run_async: Any, database: Database[Any], call: Any
) -> None:
    job = florist_test_job()  # never created: every update matches nothing
    with pytest.raises(AssertionError, match=re.escape("UpdateResult's 'n' is not 1")):
        run_async(lambda db: call(job, db, database))


async def _now(value: Any) -> Any:
    return value


def test_florist_scenario_metrics_of_an_unknown_client(database: Database[Any]) -> None:
    job = florist_test_job()
    database[JOB_COLLECTION].insert_one(job.to_document())
    message = (
        "client uuid client-id-that-does-not-exist is not in clients_info "
        "(['test-client-uuids-1', 'test-client-uuids-2'])"
    )
    with pytest.raises(AssertionError, match=re.escape(message)):
        job.set_client_metrics("client-id-that-does-not-exist", [{}], database)
