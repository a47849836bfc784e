"""Requeue records: a token vouches for exactly the entry `dlq requeue` wrote.

The record under a ``requeue_token`` holds the entry's ``origin_id`` and a digest of its
whole field map, so the token (and its ``origin_id``) copied onto any other entry, or
the entry changed in any field, vouches for nothing: that entry is ``invalid`` and the
job keeps what it had. Replay honours the same records, so it rebuilds the same documents.
"""

from __future__ import annotations

import json
from typing import Any

import mongomock_ng
import redis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.mongo_checks import checking_database
from tests.support import (
    STREAM,
    client_metrics,
    dead_letters,
    job_of,
    make_worker,
    requeued,
    server_metrics,
    settings,
)
from worker.consumer import Worker
from worker.deadletter import list_dead_letters, requeue
from worker.replay import replay
from worker.requeues import RequeueRecord, digest_of, vouched_origin

JOB = "job-a"
OTHER = "job-b"
TOKEN = "0123456789abcdef0123456789abcdef"


def _requeued_entry(fields: dict[bytes, bytes], origin_id: str) -> tuple[dict[bytes, bytes], str]:
    """``fields`` as `dlq requeue` writes them, and the record it keeps for them."""
    written = {**fields, b"origin_id": origin_id.encode(), b"requeue_token": TOKEN.encode()}
    return written, RequeueRecord.of(written).text()


names = st.sampled_from(
    [
        *(b"v", b"type", b"job_id", b"server_uuid", b"client_uuid", b"metrics", b"status"),
        *(b"error_message", b"origin_id", b"sent_at", b"x"),
    ]
)
values = st.one_of(
    st.sampled_from([b"", b"1", b"job-a", b"job-b", b"FINISHED_WITH_ERROR", b"5-0", b"{}"]),
    st.binary(max_size=12),
)
entries = st.fixed_dictionaries(
    {b"v": st.just(b"1"), b"type": st.sampled_from([b"server.metrics", b"job.status"])},
    optional={name: values for name in (b"job_id", b"server_uuid", b"metrics", b"status")},
)


@st.composite
def modifications(draw: st.DrawFn, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """``fields`` changed in at least one field other than the token: a value changed, a
    field added or removed, or one renamed."""
    changed = dict(fields)
    while changed == fields or _without_token(changed) == _without_token(fields):
        how = draw(st.sampled_from(["set", "drop", "rename"]))
        name = draw(st.sampled_from(sorted(set(changed) - {b"requeue_token"})))
        if how == "set":
            changed[draw(st.one_of(names, st.just(name)))] = draw(values)
        elif how == "drop" and name != b"origin_id":
            del changed[name]
        elif how == "rename":
            changed[name + draw(st.sampled_from([b"_", b" ", b"X"]))] = changed.pop(name)
    return changed


def _without_token(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {name: value for name, value in fields.items() if name != b"requeue_token"}


@hsettings(max_examples=300, deadline=None)
@given(data=st.data(), fields=entries)
def test_any_change_to_a_requeued_entry_leaves_its_origin_unvouched(
    data: st.DataObject, fields: dict[bytes, bytes]
) -> None:
    written, record = _requeued_entry(fields, "5-0")
    records = {TOKEN: record}
    assert vouched_origin(written, records) == "5-0"

    changed = data.draw(modifications(written))

    assert vouched_origin(changed, records) is None


@hsettings(max_examples=300, deadline=None)
@given(fields=entries, other=entries)
def test_a_token_and_origin_copied_onto_another_entry_vouch_for_nothing(
    fields: dict[bytes, bytes], other: dict[bytes, bytes]
) -> None:
    written, record = _requeued_entry(fields, "5-0")
    copied = {**other, b"origin_id": b"5-0", b"requeue_token": TOKEN.encode()}

    vouched = vouched_origin(copied, {TOKEN: record})

    assert vouched == ("5-0" if _without_token(copied) == _without_token(written) else None)


def test_the_digest_covers_names_and_values_whatever_their_order() -> None:
    fields = {b"v": b"1", b"job_id": b"ab", b"x": b"c"}
    assert digest_of(fields) == digest_of(dict(reversed(fields.items())))
    assert digest_of(fields) == digest_of({**fields, b"requeue_token": b"any"})
    assert digest_of(fields) != digest_of({b"v": b"1", b"job_id": b"a", b"x": b"bc"})
    assert digest_of(fields) != digest_of({b"v": b"1", b"job_id": b"abx", b"": b"c"})


def test_a_record_without_a_digest_vouches_for_nothing() -> None:
    written, _record = _requeued_entry({b"v": b"1", b"type": b"job.status"}, "5-0")
    assert RequeueRecord.parse("5-0") is None
    assert vouched_origin(written, {TOKEN: "5-0"}) is None  # a record of an older version


# ------------------------------------------------------------------ end to end


def _status(job_id: str, status: str, **more: str) -> dict[str, str]:
    return {"v": "1", "type": "job.status", "job_id": job_id, "status": status, **more}


def _requeue_a_dead_error_finish(client: redis.Redis, database: Any) -> tuple[str, str]:
    """JOB's FINISHED_WITH_ERROR was dead-lettered (JOB was not stored yet) and requeued
    by `dlq requeue` once it was, while OTHER finished successfully after it in the
    stream; returns its origin_id and token as the stream holds them."""
    database["job"].insert_one({"_id": OTHER, "status": "IN_PROGRESS", "clients_info": []})
    client.xadd(STREAM, _status(JOB, "FINISHED_WITH_ERROR", error_message="boom"), id="10-0")
    client.xadd(STREAM, _status(OTHER, "FINISHED_SUCCESSFULLY"), id="20-0")
    assert make_worker(client, database, max_deliveries=1).drain() == {
        "unknown_job": 1,
        "applied": 1,
    }
    database["job"].insert_one({"_id": JOB, "status": "IN_PROGRESS", "clients_info": []})
    assert requeue(client, settings=settings()) == 1
    _new_id, fields = client.xrange(STREAM)[-1]
    return fields[b"origin_id"].decode(), fields[b"requeue_token"].decode()


def test_a_real_token_on_another_job_cannot_flip_its_finish(
    fake_redis: redis.Redis, database: Any
) -> None:
    origin_id, token = _requeue_a_dead_error_finish(fake_redis, database)
    forged = _status(OTHER, "FINISHED_WITH_ERROR", error_message="forged")
    fake_redis.xadd(STREAM, {**forged, "origin_id": origin_id, "requeue_token": token})

    assert make_worker(fake_redis, database).drain() == {"applied": 1, "invalid": 1}

    assert job_of(database, OTHER)["status"] == "FINISHED_SUCCESSFULLY"
    assert job_of(database, JOB)["status"] == "FINISHED_WITH_ERROR"  # the real requeue
    [letter] = dead_letters(fake_redis)
    assert letter["job_id"] == OTHER and "not vouched for" in letter["dead_error"]


def test_a_requeued_snapshot_with_other_metrics_is_not_vouched_for(
    fake_redis: redis.Redis, database: Any
) -> None:
    snapshot = {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"r": 1}'}
    fake_redis.xadd(STREAM, snapshot, id="10-0")
    assert make_worker(fake_redis, database, max_deliveries=1).drain() == {"unknown_job": 1}
    database["job"].insert_one({"_id": JOB, "status": "IN_PROGRESS", "clients_info": []})
    assert requeue(fake_redis, settings=settings()) == 1
    _new_id, fields = fake_redis.xrange(STREAM)[-1]
    fake_redis.xadd(STREAM, {**fields, b"metrics": b'{"r": 99}'})  # the token, reused

    assert make_worker(fake_redis, database).drain() == {"applied": 1, "invalid": 1}

    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"r": 1}


def test_an_older_versions_record_is_requeued_again_at_its_origin_with_vouch_origin(
    fake_redis: redis.Redis, database: Any
) -> None:
    database["job"].insert_one({"_id": JOB, "status": "IN_PROGRESS", "clients_info": []})
    fake_redis.xadd(STREAM, _status(JOB, "FINISHED_SUCCESSFULLY"), id="30-0")
    old = _status(JOB, "FINISHED_WITH_ERROR", origin_id="10-0", requeue_token="old")
    fake_redis.hset(f"{STREAM}:requeued", "old", "10-0")  # an ID alone: no digest
    fake_redis.xadd(STREAM, old, id="40-0")
    assert make_worker(fake_redis, database).drain() == {"applied": 1, "invalid": 1}
    assert job_of(database, JOB)["status"] == "FINISHED_SUCCESSFULLY"

    [letter] = list_dead_letters(fake_redis, settings=settings())
    assert letter.claimed_origin == "10-0"
    assert requeue(fake_redis, settings=settings(), vouch_claimed_origin=True) == 1
    assert make_worker(fake_redis, database).drain() == {"applied": 1}

    assert job_of(database, JOB)["status"] == "FINISHED_WITH_ERROR"  # the first finish wins


def test_replay_rebuilds_the_document_a_requeue_left(
    fake_redis: redis.Redis, database: Any
) -> None:
    origin_id, token = _requeue_a_dead_error_finish(fake_redis, database)
    forged = _status(OTHER, "FINISHED_WITH_ERROR", error_message="forged")
    fake_redis.xadd(STREAM, {**forged, "origin_id": origin_id, "requeue_token": token})
    make_worker(fake_redis, database).drain()
    rebuilt = mongomock_ng.MongoClient()["rebuilt"]
    rebuilt["job"].insert_many(
        [
            {"_id": JOB, "status": "IN_PROGRESS", "clients_info": []},
            {"_id": OTHER, "status": "IN_PROGRESS", "clients_info": []},
        ]
    )

    counts = replay(fake_redis, rebuilt, settings=settings())

    # 10-0 applies at its own ID, and its requeued copy is a duplicate of it.
    assert counts == {"applied": 2, "duplicate": 1, "invalid": 1}
    for job_id in (JOB, OTHER):
        assert job_of(rebuilt, job_id) == job_of(database, job_id)


# ------------------------- origin_id claims: unvouched, or not before the entry


def test_a_letter_claiming_an_unvouched_origin_is_held_until_vouched_then_loses_to_newer(
    fake_redis,
):
    database = checking_database(
        {"_id": JOB, "status": "NOT_STARTED", "clients_info": []},
        {"_id": OTHER, "status": "NOT_STARTED", "clients_info": []},
    )
    config = settings()
    # History: the snapshot of round 1 (first ID 100-0) was dead-lettered by an older
    # worker, round 3 was applied at 300-0, then the older `dlq requeue` wrote round 1
    # back at 500-0 with origin_id 100-0 and no token. Then the upgrade.
    fake_redis.xadd(STREAM, server_metrics(JOB, {"round": 3}), id="300-0")
    fake_redis.xadd(STREAM, server_metrics(JOB, {"round": 1}, origin_id="100-0"), id="500-0")
    Worker(fake_redis, database, config).drain()  # 300-0 applied, 500-0 invalid
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"round": 3}

    # A plain requeue leaves such a letter in place: at its own later ID the old snapshot
    # would overwrite round 3.
    assert requeue(fake_redis, settings=config) == 0
    assert fake_redis.xlen(config.dead_stream) == 1
    # The operator who knows it was an older version's requeue vouches for the claim.
    assert requeue(fake_redis, settings=config, vouch_claimed_origin=True) == 1
    assert Worker(fake_redis, database, config).drain() == {"duplicate": 1}

    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"round": 3}


def _client_event(version, **extra):
    return client_metrics(JOB, "u", {"version": version}, **extra)


def test_an_origin_id_not_before_the_entrys_own_id_is_invalid(fake_redis, database):
    database["job"].insert_one(
        {"_id": JOB, "status": "IN_PROGRESS", "clients_info": [{"uuid": "u"}]}
    )
    fake_redis.xadd(STREAM, requeued(fake_redis, _client_event(1), "99999999999999-0"), id="5-0")
    fake_redis.xadd(STREAM, _client_event(2), id="6-0")
    assert make_worker(fake_redis, database, batch_size=1).drain() == {"invalid": 1, "applied": 1}
    assert "not before the entry's own ID" in dead_letters(fake_redis)[0]["dead_error"]
    assert json.loads(job_of(database, JOB)["clients_info"][0]["metrics"]) == {"version": 2}
