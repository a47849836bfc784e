"""Identity by uuid: FLorist's processes know their uuid, never the job id.

A server names its job by ``server_uuid`` (matched against ``Job.server_uuid``), a
client by its ``client_uuid`` alone (matched against ``clients_info[].uuid``). The API
stores those uuids (``Job.set_uuids``) only after the server reported ``fit_start`` and
every client started, so the first events arrive before any job has the uuid: they are
``unknown_job``, retried for ``FLORIST_UNKNOWN_RETRY_S``, and applied once it is stored.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support import STREAM, dead_letters, job_of, make_worker, pending_of
from worker.replay import replay
from worker.settings import Settings

JOB = "job-u"
SERVER = "server-uuid-1"
CLIENTS = ("client-uuid-1", "client-uuid-2")


def _job(database: Any, *, with_uuids: bool) -> None:
    document: dict[str, Any] = {
        "_id": JOB,
        "status": "IN_PROGRESS",
        "clients_info": [
            {"uuid": uuid if with_uuids else None, "metrics": None} for uuid in CLIENTS
        ],
    }
    if with_uuids:
        document["server_uuid"] = SERVER
    database["job"].insert_one(document)


def _set_uuids(database: Any) -> None:
    database["job"].update_one(
        {"_id": JOB},
        {
            "$set": {
                "server_uuid": SERVER,
                "clients_info.0.uuid": CLIENTS[0],
                "clients_info.1.uuid": CLIENTS[1],
            }
        },
    )


def _server(metrics: dict[str, Any]) -> dict[str, str]:
    return {
        "v": "1",
        "type": "server.metrics",
        "server_uuid": SERVER,
        "metrics": json.dumps(metrics),
    }


def _client(index: int, metrics: dict[str, Any]) -> dict[str, str]:
    return {
        "v": "1",
        "type": "client.metrics",
        "client_uuid": CLIENTS[index],
        "metrics": json.dumps(metrics),
    }


def test_events_named_by_uuid_reach_their_job(fake_redis, database):
    _job(database, with_uuids=True)
    for fields in (_server({"fit_start": "t"}), _client(0, {"a": 1}), _client(1, {"b": 2})):
        fake_redis.xadd(STREAM, fields)
    fake_redis.xadd(
        STREAM,
        {
            "v": "1",
            "type": "job.status",
            "server_uuid": SERVER,
            "status": "FINISHED_WITH_ERROR",
            "error_message": "x",
        },
    )

    assert make_worker(fake_redis, database).drain() == {"applied": 4}
    document = job_of(database, JOB)
    assert json.loads(document["server_metrics"]) == {"fit_start": "t"}
    assert [json.loads(c["metrics"]) for c in document["clients_info"]] == [{"a": 1}, {"b": 2}]
    assert document["status"] == "FINISHED_WITH_ERROR"


def test_events_published_before_set_uuids_are_applied_once_the_uuids_are_stored(
    fake_redis, database
):
    _job(database, with_uuids=False)
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}))
    fake_redis.xadd(STREAM, _client(0, {"initialized": "t"}))
    worker = make_worker(
        fake_redis, database, max_deliveries=1, unknown_retry_s=3600, retry_idle_ms=1
    )

    assert worker.drain() == {"unknown_job": 2}
    assert dead_letters(fake_redis) == []  # young: kept pending, not dead-lettered
    assert pending_of(fake_redis) == 2

    _set_uuids(database)
    time.sleep(0.02)  # past FLORIST_RETRY_IDLE_MS
    assert worker.drain() == {"applied": 2}
    assert pending_of(fake_redis) == 0
    document = job_of(database, JOB)
    assert json.loads(document["server_metrics"]) == {"fit_start": "t"}
    assert json.loads(document["clients_info"][0]["metrics"]) == {"initialized": "t"}


def test_an_unresolved_uuid_is_dead_lettered_only_after_the_retry_time(fake_redis, database):
    _job(database, with_uuids=False)
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}))

    assert make_worker(fake_redis, database, max_deliveries=1, unknown_retry_s=0).drain() == {
        "unknown_job": 1
    }
    [letter] = dead_letters(fake_redis)
    assert letter["dead_reason"] == "unknown_job" and letter["server_uuid"] == SERVER


class CountingDatabase:
    """Counts the uuid lookups (find_one by server_uuid or clients_info.uuid)."""

    def __init__(self, database: Any) -> None:
        self._database = database
        self.lookups = 0

    def __getitem__(self, name: str) -> Any:
        collection = self._database[name]
        owner = self

        class Counting:
            def find_one(self, query: Any = None, *args: Any, **kwargs: Any) -> Any:
                if query and ("server_uuid" in query or "clients_info.uuid" in query):
                    owner.lookups += 1
                return collection.find_one(query, *args, **kwargs)

            def __getattr__(self, attribute: str) -> Any:
                return getattr(collection, attribute)

        return Counting()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)


def test_a_resolved_uuid_is_looked_up_once(fake_redis, database):
    _job(database, with_uuids=True)
    counting = CountingDatabase(database)
    worker = make_worker(fake_redis, counting, batch_size=1)
    for round_number in range(5):
        fake_redis.xadd(STREAM, _server({"round": round_number}))
        fake_redis.xadd(STREAM, _client(0, {"round": round_number}))

    assert worker.drain() == {"applied": 10}
    assert counting.lookups == 2  # one per uuid, then the cache


def test_uuid_events_and_job_id_events_of_one_job_mix(fake_redis, database):
    _job(database, with_uuids=True)
    fake_redis.xadd(STREAM, _server({"v": 1}), id="1-0")
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"v":2}'}, id="2-0"
    )
    first = make_worker(fake_redis, database, batch_size=200)
    assert first.drain() == {"applied": 2}
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"v": 2}

    # Redelivered in the other order (a claim after a crash): the guard keeps the newest.
    assert replay(
        fake_redis, database, start="1-0", end="1-0", settings=Settings(consumer="t")
    ) == {"duplicate": 1}
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"v": 2}


def test_replay_resolves_uuids_too(fake_redis, database):
    _job(database, with_uuids=True)
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}))
    fake_redis.xadd(STREAM, _client(1, {"x": 1}))
    assert replay(fake_redis, database, settings=Settings(consumer="t")) == {"applied": 2}
    assert replay(fake_redis, database, settings=Settings(consumer="t")) == {"duplicate": 2}
