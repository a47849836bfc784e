"""The watchdog (issue 12): a job whose FL server went silent is finished with an error,
and no backlog, outage or second worker makes it finish a live job or finish one twice."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import mongomock_ng
import pytest
import redis

from tests.conftest import load_job_document
from tests.mongo_checks import CheckingDatabase
from tests.support import GROUP, STREAM, job_of, make_worker
from worker.entities import Job
from worker.replay import replay
from worker.watchdog import MARKER_FIELD, consumed_horizon, lock_key, redis_now_ms

JOB = load_job_document()
JOB_ID = JOB["_id"]
SERVER_UUID = JOB["server_uuid"]
CLIENTS = [client["uuid"] for client in JOB["clients_info"]]
MESSAGE = re.compile(
    r"no event from the FL server since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; "
    r"finished by florist-worker after 0\.5 s of silence"
)


def _database() -> Any:
    database = CheckingDatabase(mongomock_ng.MongoClient()["watchdog"])
    database["job"].insert_one(load_job_document())
    return database


def _server(metrics: dict[str, Any]) -> dict[str, str]:
    return {"v": "1", "type": "server.metrics", "server_uuid": SERVER_UUID,
            "metrics": json.dumps(metrics)}  # fmt: skip


def _status(status: str) -> dict[str, str]:
    return {"v": "1", "type": "job.status", "job_id": JOB_ID, "status": status}


def _heartbeat(host_type: str = "server", client: str | None = None) -> dict[str, str]:
    if host_type == "server":
        return {"v": "1", "type": "host.heartbeat", "host_type": "server", "job_id": JOB_ID}
    return {"v": "1", "type": "host.heartbeat", "host_type": "client", "client_uuid": str(client)}


def _worker(client: redis.Redis, database: Any, **overrides: Any) -> Any:
    values: dict[str, Any] = {"stale_after_s": 0.5, "watchdog_interval_s": 0.05}
    values.update(overrides)
    return make_worker(client, database, **values)


def _scan(worker: Any) -> Any:
    """A scan now, whoever held the lock before (each test controls the lock itself)."""
    worker.redis.delete(lock_key(STREAM))
    return worker.run_watchdog()


def _ms_ago(client: redis.Redis, seconds: float) -> int:
    return redis_now_ms(client) - int(seconds * 1000)


def _watchdog_entries(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in client.xrange(STREAM)
        if MARKER_FIELD.encode() in fields
    ]


def test_a_server_that_stops_mid_run_gets_its_job_finished_with_the_message(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    fake_redis.xadd(STREAM, _server({"host_type": "server", "fit_start": "t"}))
    fake_redis.xadd(STREAM, _server({"host_type": "server", "fit_start": "t", "rounds": {}}))
    worker.drain()
    assert job_of(database, JOB_ID)["status"] == "IN_PROGRESS"
    last_event = job_of(database, JOB_ID)["server_last_event_ms"]

    report = _scan(worker)  # first contact: silence counts from here at the earliest
    assert report is not None and report.finished == []
    time.sleep(0.7)  # the server process is gone: nothing more arrives
    report = _scan(worker)
    assert report is not None and report.finished == [JOB_ID]
    [entry] = _watchdog_entries(fake_redis)
    assert entry["type"] == "job.status" and entry["status"] == "FINISHED_WITH_ERROR"
    assert entry[MARKER_FIELD] == "test-worker"
    assert worker.drain() == {"applied": 1}

    document = job_of(database, JOB_ID)
    assert document["status"] == "FINISHED_WITH_ERROR"
    assert MESSAGE.fullmatch(document["error_message"]), document["error_message"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_event / 1000))
    assert since in document["error_message"]
    Job(**document)  # the liveness fields never stop FLorist's model from loading it
    assert _scan(worker).finished == []  # finished: never again


def test_heartbeats_keep_a_job_with_long_rounds_in_progress(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    fake_redis.xadd(STREAM, _server({"host_type": "server", "fit_start": "t"}))
    worker.drain()
    _scan(worker)
    for _beat in range(8):  # a round of 1.6 s, three times the limit, with heartbeats only
        time.sleep(0.2)
        fake_redis.xadd(STREAM, _heartbeat())
        fake_redis.xadd(STREAM, _heartbeat("client", CLIENTS[0]))
        worker.drain()
        assert _scan(worker).finished == []
    document = job_of(database, JOB_ID)
    assert document["status"] == "IN_PROGRESS"
    assert document["server_metrics"] == json.dumps({"host_type": "server", "fit_start": "t"})
    assert document["clients_info"][0]["last_event_ms"] >= document["server_last_event_ms"] - 50


def test_a_worker_down_longer_than_the_limit_does_not_reap_jobs_with_events_in_its_backlog(
    fake_redis,
):
    database = _database()
    worker = _worker(fake_redis, database, stale_after_s=5)
    worker.watchdog.reachable_since_ms = 0  # up for ages: only the horizon rule is at work
    start = _ms_ago(fake_redis, 40)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    worker.drain()
    # The worker goes down for 40 s, eight times the limit; the server reports every 3 s.
    for second in range(3, 40, 3):
        fake_redis.xadd(
            STREAM, _server({"fit_start": "t", "at": second}), id=f"{start + second * 1000}-0"
        )
    # Another worker had taken the first of them and died with it pending.
    fake_redis.xreadgroup(GROUP, "dead-worker", {STREAM: ">"}, count=1)

    horizon = consumed_horizon(fake_redis, STREAM, GROUP, redis_now_ms(fake_redis))
    assert horizon == start + 3000  # the oldest pending entry, not now
    report = _scan(worker)
    assert report is not None and report.finished == []
    assert report.jobs[0].silence_s == pytest.approx(3.0)
    # A wall-clock watchdog would have reaped it: 40 s since the last applied event.
    assert redis_now_ms(fake_redis) - job_of(database, JOB_ID)["server_last_event_ms"] > 5000

    worker.settings = worker.settings.model_copy(update={"claim_idle_ms": 1})
    worker.drain()  # the backlog, and (claimed) the dead worker's entry
    assert _scan(worker).finished == []
    assert job_of(database, JOB_ID)["status"] == "IN_PROGRESS"
    assert json.loads(job_of(database, JOB_ID)["server_metrics"])["at"] == 39


def test_undelivered_entries_hold_the_horizon_back(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database, stale_after_s=5)
    worker.watchdog.reachable_since_ms = 0
    start = _ms_ago(fake_redis, 60)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    worker.drain()
    fake_redis.xadd(STREAM, _heartbeat(), id=f"{start + 4000}-0")  # not read by anyone yet
    assert _scan(worker).finished == []
    assert worker.drain() == {"applied": 1}
    assert job_of(database, JOB_ID)["server_last_event_ms"] == start + 4000
    report = _scan(worker)  # caught up: judged at now, 56 s after the heartbeat
    assert report.finished == [JOB_ID]


def test_after_a_redis_outage_a_full_limit_passes_before_any_reap(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database, stale_after_s=5)
    start = _ms_ago(fake_redis, 60)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    worker.drain()
    worker.watchdog.redis_outage()  # e.g. the loop saw Redis go away and come back
    report = _scan(worker)
    assert report.finished == [] and report.jobs[0].silence_s < 1
    worker.watchdog.reachable_since_ms -= 6000  # as if the limit had passed with Redis up
    assert _scan(worker).finished == [JOB_ID]


def test_two_workers_reap_a_job_once(fake_redis):
    database = _database()
    first = _worker(fake_redis, database, consumer="first", watchdog_interval_s=60)
    second = _worker(fake_redis, database, consumer="second", watchdog_interval_s=60)
    for worker in (first, second):
        worker.watchdog.reachable_since_ms = 0
    start = _ms_ago(fake_redis, 30)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    first.drain()

    assert first.run_watchdog().finished == [JOB_ID]
    assert second.run_watchdog() is None  # the lock: one scan per interval
    assert len(_watchdog_entries(fake_redis)) == 1

    # Even without the lock, a second finish published before the first was applied is
    # only a duplicate: the first finish in the stream wins.
    fake_redis.delete(lock_key(STREAM))
    assert second.run_watchdog().finished == [JOB_ID]
    counts = first.drain()
    counts.update(second.drain())
    assert counts == {"applied": 1, "duplicate": 1}
    document = job_of(database, JOB_ID)
    first_finish = fake_redis.xrange(STREAM)[-2][0].decode()
    assert document["status_position"].startswith(f"{int(first_finish.split('-')[0]):020d}")
    fake_redis.delete(lock_key(STREAM))
    assert second.run_watchdog().finished == []


def test_a_late_fit_end_keeps_the_watchdog_s_status_and_stores_its_metrics(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database)
    worker.watchdog.reachable_since_ms = 0
    start = _ms_ago(fake_redis, 30)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    worker.drain()
    assert _scan(worker).finished == [JOB_ID]
    worker.drain()
    finished = job_of(database, JOB_ID)

    fake_redis.xadd(STREAM, _server({"fit_start": "t", "fit_end": "late", "shutdown": "x"}))
    assert worker.drain() == {"applied": 1}  # the metrics part
    document = job_of(database, JOB_ID)
    assert document["status"] == "FINISHED_WITH_ERROR"
    assert document["error_message"] == finished["error_message"]
    assert document["status_position"] == finished["status_position"]
    assert json.loads(document["server_metrics"])["fit_end"] == "late"
    assert document["server_last_event_ms"] > finished["server_last_event_ms"]


def test_a_fit_end_pending_before_the_watchdog_s_finish_wins(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database)
    worker.watchdog.reachable_since_ms = 0
    start = _ms_ago(fake_redis, 30)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    worker.drain()
    # The watchdog judges at the horizon, before the pending fit_end: its own finish goes
    # after it in the stream, so the fit_end is the first finish.
    fake_redis.xadd(STREAM, _server({"fit_start": "t", "fit_end": "e"}), id=f"{start + 1000}-0")
    fake_redis.xadd(STREAM, _heartbeat(), id=f"{start + 1000}-1")
    fake_redis.xreadgroup(GROUP, "slow-worker", {STREAM: ">"}, count=2)  # held, not acked
    assert _scan(worker).finished == [JOB_ID]  # silent 29 s at the horizon, before the fit_end
    worker.settings = worker.settings.model_copy(update={"claim_idle_ms": 1})
    worker.drain()
    document = job_of(database, JOB_ID)
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    assert document["error_message"] is None  # the watchdog's message, cleared


def test_a_job_without_any_event_from_its_server_is_timed_from_when_it_was_first_seen(
    fake_redis,
):
    database = _database()
    worker = _worker(fake_redis, database)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))  # the API's; the server never reports
    worker.drain()
    report = _scan(worker)
    assert report.finished == [] and report.jobs[0].server.last_event_ms is None
    time.sleep(0.7)
    assert _scan(worker).finished == [JOB_ID]
    worker.drain()
    message = job_of(database, JOB_ID)["error_message"]
    assert message.startswith("no event from the FL server since florist-worker began watching")


def test_zero_turns_the_watchdog_off_and_other_statuses_are_left_alone(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database, stale_after_s=0)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    worker.drain()
    assert _scan(worker) is None
    on = _worker(fake_redis, database)
    on.watchdog.reachable_since_ms = 0
    database["job"].update_one({"_id": JOB_ID}, {"$set": {"status": "NOT_STARTED"}})
    time.sleep(0.6)
    assert _scan(on).finished == []
    assert _watchdog_entries(fake_redis) == []


def test_replay_of_the_stream_gives_the_same_document(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database)
    worker.watchdog.reachable_since_ms = 0
    start = _ms_ago(fake_redis, 30)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    fake_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    fake_redis.xadd(STREAM, _heartbeat("client", CLIENTS[1]), id=f"{start}-2")
    worker.drain()
    assert _scan(worker).finished == [JOB_ID]
    fake_redis.xadd(STREAM, _server({"fit_start": "t", "fit_end": "late"}))
    worker.drain()

    rebuilt = _database()
    counts = replay(fake_redis, rebuilt, settings=worker.settings)
    assert counts.get("applied") == 5
    assert job_of(rebuilt, JOB_ID) == job_of(database, JOB_ID)
    again = replay(fake_redis, database, settings=worker.settings)  # idempotent
    assert "applied" not in again and job_of(database, JOB_ID) == job_of(rebuilt, JOB_ID)


def test_the_watchdog_never_raises_into_the_loop(fake_redis):
    database = _database()
    worker = _worker(fake_redis, database)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    worker.drain()

    class Broken:
        def find(self, *args: Any, **kwargs: Any) -> Any:
            from pymongo.errors import ServerSelectionTimeoutError

            raise ServerSelectionTimeoutError("down")

    worker.watchdog.collection = Broken()
    assert _scan(worker) is None
    down = redis.Redis(port=1, socket_connect_timeout=0.2)
    worker.watchdog.redis = down
    worker.watchdog.reachable_since_ms = 0
    assert _scan_without_lock_reset(worker) is None
    assert worker.watchdog.reachable_since_ms is None  # counted again from when it is back


def _scan_without_lock_reset(worker: Any) -> Any:
    return worker.run_watchdog()


@pytest.mark.redis_server
def test_the_horizon_on_a_real_redis(real_redis):
    database = _database()
    worker = _worker(real_redis, database, stale_after_s=5)
    worker.watchdog.reachable_since_ms = 0
    start = _ms_ago(real_redis, 60)
    real_redis.xadd(STREAM, _status("IN_PROGRESS"), id=f"{start}-0")
    real_redis.xadd(STREAM, _server({"fit_start": "t"}), id=f"{start}-1")
    worker.drain()
    now = redis_now_ms(real_redis)
    assert now - 1000 <= consumed_horizon(real_redis, STREAM, GROUP, now) <= now
    real_redis.xadd(STREAM, _heartbeat(), id=f"{start + 2000}-0")
    real_redis.xadd(STREAM, _heartbeat(), id=f"{start + 4000}-0")
    assert consumed_horizon(real_redis, STREAM, GROUP, now) == start + 2000
    real_redis.xreadgroup(GROUP, "other", {STREAM: ">"}, count=1)
    assert consumed_horizon(real_redis, STREAM, GROUP, now) == start + 2000  # now pending
    assert _scan(worker).finished == []
    assert real_redis.pttl(lock_key(STREAM)) > 0  # SET NX PX
    worker.settings = worker.settings.model_copy(update={"claim_idle_ms": 1})
    time.sleep(0.01)
    worker.drain()
    assert job_of(database, JOB_ID)["server_last_event_ms"] == start + 4000
    assert _scan(worker).finished == [JOB_ID]
    assert worker.drain() == {"applied": 1}
    assert job_of(database, JOB_ID)["status"] == "FINISHED_WITH_ERROR"


class _TimeFails:
    """A client whose TIME (the first command of a scan) raises ``error``."""

    def __init__(self, client: redis.Redis, error: Exception) -> None:
        self._client = client
        self._error = error

    def time(self) -> Any:
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.parametrize(
    ("reply", "logged", "outage"),
    [
        ("UNBLOCKED force unblock from blocking operation", "Redis unavailable", True),
        ("READONLY You can't write against a read only replica.", "Redis unavailable", True),
        ("NOPERM this user has no permissions to run the 'time' command", "Redis refused", False),
    ],
)
def test_a_scan_skipped_for_redis_says_which_failure_it_was(
    fake_redis: redis.Redis, reply: str, logged: str, outage: bool
) -> None:
    """An outage (a failover's answers included) restarts the silence count from when
    Redis is back; a refusal does not, and is logged as an error."""
    from redis._parsers import BaseParser
    from structlog.testing import capture_logs

    worker = _worker(_TimeFails(fake_redis, BaseParser.parse_error(reply)), _database())
    worker.watchdog.reachable_since_ms = 1
    with capture_logs() as logs:
        assert worker.run_watchdog() is None
    assert [entry["event"] for entry in logs] == [f"watchdog: {logged}, scan skipped"]
    assert (worker.watchdog.reachable_since_ms is None) is outage
