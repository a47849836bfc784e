"""Positions decide, never arrival or text order: redelivery and reordering are harmless."""

from __future__ import annotations

import json

from tests.support import STREAM, client_metrics, job_of, make_worker, requeued, server_metrics

JOB = "job-1"
CLIENT = "client-uuid-1"


def _job(database, status="IN_PROGRESS"):
    database["job"].insert_one(
        {
            "_id": JOB,
            "status": status,
            "clients_info": [
                {"_id": "c0", "client": "MNIST", "uuid": CLIENT, "metrics": None},
                {"_id": "c1", "client": "MNIST", "uuid": CLIENT + "-other", "metrics": None},
            ],
        }
    )


def _server(version, **extra):
    return server_metrics(JOB, {"version": version}, **extra)


def _client(version, client_uuid=CLIENT, **extra):
    return client_metrics(JOB, client_uuid, {"version": version}, **extra)


def test_sequence_with_more_digits_is_newer(fake_redis, database):
    _job(database)
    fake_redis.xadd(STREAM, _server("at 5-9"), id="5-9")
    fake_redis.xadd(STREAM, _server("at 5-10"), id="5-10")
    worker = make_worker(fake_redis, database, batch_size=1)
    assert worker.drain() == {"applied": 2}
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"version": "at 5-10"}


def test_older_position_arriving_later_is_a_duplicate(fake_redis, database):
    _job(database)
    # The newer snapshot (5-10) is applied first, as a second worker might.
    fake_redis.xadd(STREAM, _client("newer"), id="5-10")
    worker = make_worker(fake_redis, database, batch_size=1)
    worker.drain()
    # A requeued copy of an older snapshot: new entry ID, but origin_id 5-9.
    fake_redis.xadd(STREAM, requeued(fake_redis, _client("older"), "5-9"), id="6-0")
    assert worker.drain() == {"duplicate": 1}
    document = job_of(database, JOB)
    assert json.loads(document["clients_info"][0]["metrics"]) == {"version": "newer"}
    assert document["clients_info"][1]["metrics"] is None


def test_requeued_event_newer_than_the_state_applies(fake_redis, database):
    _job(database)
    fake_redis.xadd(STREAM, _client("first"), id="5-1")
    worker = make_worker(fake_redis, database, batch_size=1)
    worker.drain()
    fake_redis.xadd(STREAM, requeued(fake_redis, _client("requeued"), "5-2"), id="9-0")
    assert worker.drain() == {"applied": 1}
    assert json.loads(job_of(database, JOB)["clients_info"][0]["metrics"]) == {
        "version": "requeued"
    }


def test_same_event_twice_is_a_duplicate(fake_redis, database):
    _job(database)
    fake_redis.xadd(STREAM, _server("v1"), id="7-0")
    fake_redis.xadd(STREAM, requeued(fake_redis, _server("v1 again"), "7-0"), id="8-0")
    counts = make_worker(fake_redis, database, batch_size=1).drain()
    assert counts == {"applied": 1, "duplicate": 1}
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"version": "v1"}


def test_coalescing_writes_only_the_newest_snapshot_of_a_target(fake_redis, database):
    _job(database)
    for sequence in range(1, 6):
        fake_redis.xadd(STREAM, _client(f"v{sequence}"), id=f"3-{sequence}")
    counts = make_worker(fake_redis, database, batch_size=200).drain()
    assert counts == {"coalesced": 4, "applied": 1}
    assert json.loads(job_of(database, JOB)["clients_info"][0]["metrics"]) == {"version": "v5"}


def _status(status, **extra):
    return {"v": "1", "type": "job.status", "job_id": JOB, "status": status, **extra}


def test_first_finish_in_the_stream_wins_even_when_applied_last(fake_redis, database):
    _job(database)
    error = _status("FINISHED_WITH_ERROR", error_message="client 1 crashed")
    fake_redis.xadd(STREAM, error, id="20-0")
    finish = {**_server("done"), "metrics": json.dumps({"fit_end": "t"})}
    fake_redis.xadd(STREAM, finish, id="30-0")
    worker = make_worker(fake_redis, database, batch_size=1)
    assert worker.drain() == {"applied": 2}  # the metrics apply, the later finish does not
    document = job_of(database, JOB)
    assert document["status"] == "FINISHED_WITH_ERROR"
    assert document["error_message"] == "client 1 crashed"
    assert json.loads(document["server_metrics"]) == {"fit_end": "t"}


def test_an_earlier_finish_applied_late_replaces_a_later_one(fake_redis, database):
    _job(database)
    finish = {**_server("done"), "metrics": json.dumps({"fit_end": "t"})}
    fake_redis.xadd(STREAM, finish, id="30-0")
    worker = make_worker(fake_redis, database, batch_size=1)
    worker.drain()
    assert job_of(database, JOB)["status"] == "FINISHED_SUCCESSFULLY"
    # An error finish that was earlier in the stream, delivered late (requeued).
    late = requeued(fake_redis, _status("FINISHED_WITH_ERROR", error_message="boom"), "20-0")
    fake_redis.xadd(STREAM, late, id="40-0")
    assert worker.drain() == {"applied": 1}
    document = job_of(database, JOB)
    assert document["status"] == "FINISHED_WITH_ERROR"
    assert document["error_message"] == "boom"


def test_status_transitions(fake_redis, database):
    _job(database, status="NOT_STARTED")
    worker = make_worker(fake_redis, database, batch_size=1)
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    fake_redis.xadd(STREAM, _status("FINISHED_SUCCESSFULLY"))
    fake_redis.xadd(STREAM, _status("FINISHED_SUCCESSFULLY"))
    fake_redis.xadd(STREAM, _status("FINISHED_WITH_ERROR", error_message="late"))
    fake_redis.xadd(STREAM, _status("IN_PROGRESS"))
    fake_redis.xadd(STREAM, _status("NOT_STARTED"))
    assert worker.drain() == {"applied": 2, "duplicate": 2, "rejected_transition": 3}
    document = job_of(database, JOB)
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    assert "error_message" not in document or document["error_message"] is None


def test_not_started_can_finish_directly_with_its_error(fake_redis, database):
    _job(database, status="NOT_STARTED")
    fake_redis.xadd(STREAM, _status("FINISHED_WITH_ERROR", error_message="no clients"))
    assert make_worker(fake_redis, database).drain() == {"applied": 1}
    document = job_of(database, JOB)
    assert (document["status"], document["error_message"]) == ("FINISHED_WITH_ERROR", "no clients")


def test_metrics_keep_applying_after_the_job_finished(fake_redis, database):
    _job(database, status="FINISHED_SUCCESSFULLY")
    fake_redis.xadd(STREAM, _server("shutdown snapshot"))
    fake_redis.xadd(STREAM, _client("client shutdown"))
    assert make_worker(fake_redis, database, batch_size=1).drain() == {"applied": 2}
    document = job_of(database, JOB)
    assert json.loads(document["server_metrics"]) == {"version": "shutdown snapshot"}
    assert document["status"] == "FINISHED_SUCCESSFULLY"


def test_every_copy_of_a_repeated_client_uuid_gets_the_same_newest_snapshot(fake_redis, database):
    database["job"].insert_one(
        {"_id": JOB, "status": "IN_PROGRESS", "clients_info": [{"uuid": "u"}, {"uuid": "u"}]}
    )
    fake_redis.xadd(STREAM, _client(2, client_uuid="u"), id="5-2")  # the newer one first
    worker = make_worker(fake_redis, database, batch_size=1)
    assert worker.drain() == {"applied": 1}
    fake_redis.xadd(STREAM, requeued(fake_redis, _client(1, client_uuid="u"), "5-1"), id="6-0")
    fake_redis.xadd(STREAM, requeued(fake_redis, _client(2, client_uuid="u"), "5-2"), id="6-1")
    assert worker.drain() == {"duplicate": 2}
    metrics = [json.loads(c["metrics"]) for c in job_of(database, JOB)["clients_info"]]
    assert metrics == [{"version": 2}, {"version": 2}]
