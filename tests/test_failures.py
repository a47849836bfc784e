"""Bad input is dead-lettered with its reason; unknown targets are retried; nothing is lost."""

from __future__ import annotations

import json
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from tests.support import (
    DEAD,
    STREAM,
    dead_letters,
    job_of,
    make_worker,
    pending_of,
    publish,
)
from tests.support import settings as worker_settings
from worker.consumer import Worker
from worker.store import MongoJobStore, StoreUnavailable

JOB = "job-1"
GOOD = {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"round": 1}'}

BAD_ENTRIES = {
    "missing field": ({"v": "1", "type": "server.metrics", "job_id": JOB}, "invalid", "metrics"),
    "bad json": ({**GOOD, "metrics": "{not json"}, "invalid", "not valid JSON"),
    "metrics not an object": ({**GOOD, "metrics": "[1, 2]"}, "invalid", "JSON object"),
    "unknown type": ({**GOOD, "type": "server.logs"}, "invalid", "unknown type"),
    "unknown status": (
        {"v": "1", "type": "job.status", "job_id": JOB, "status": "DONE"},
        "invalid",
        "unknown status 'DONE'",
    ),
    "missing version": ({k: v for k, v in GOOD.items() if k != "v"}, "invalid", "'v'"),
    "unsupported version": ({**GOOD, "v": "2"}, "unsupported_version", "newer"),
    "empty job id": ({**GOOD, "job_id": ""}, "invalid", "job_id"),
    "over the size limit": ({**GOOD, "pad": "x" * 5000}, "invalid", "over the limit"),
    "too deep": ({**GOOD, "metrics": '{"a":' * 40 + "1" + "}" * 40}, "invalid", "deep"),
    "bad origin id": ({**GOOD, "origin_id": "yesterday"}, "invalid", "origin_id"),
}


def _job(database):
    database["job"].insert_one(
        {"_id": JOB, "status": "IN_PROGRESS", "clients_info": [{"uuid": "c-1", "metrics": None}]}
    )


@pytest.mark.parametrize("name", sorted(BAD_ENTRIES))
def test_each_kind_of_bad_entry_is_dead_lettered_and_the_worker_goes_on(real_redis, database, name):
    _job(database)
    fields, reason, message = BAD_ENTRIES[name]
    [bad_id, _good_id] = publish(real_redis, [fields, GOOD])

    counts = make_worker(real_redis, database, batch_size=1, max_entry_bytes=4096).drain()

    assert counts == {reason: 1, "applied": 1}
    [letter] = dead_letters(real_redis)
    assert letter["dead_reason"] == reason
    assert message in letter["dead_error"]
    assert letter["origin_id"] == bad_id
    assert letter["origin_stream"] == STREAM
    assert letter["deliveries"] == "1"
    kept = {k: letter["dead_field:origin_id" if k == "origin_id" else k] for k in fields}
    assert kept == fields  # every original field kept, origin_id under its escaped name
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"round": 1}
    assert pending_of(real_redis) == 0


def test_non_utf8_fields_are_dead_lettered_byte_for_byte(real_redis, database):
    _job(database)
    real_redis.xadd(STREAM, {b"v": b"1", b"type": b"server.metrics", b"job_id": b"\xff\xfe"})
    assert make_worker(real_redis, database).drain() == {"invalid": 1}
    [(_id, fields)] = real_redis.xrange(DEAD)
    assert fields[b"job_id"] == b"\xff\xfe"
    assert b"UTF-8" in fields[b"dead_error"]


def test_unknown_job_is_retried_until_the_job_exists(real_redis, database):
    publish(real_redis, [GOOD])
    worker = make_worker(real_redis, database, retry_idle_ms=1, max_deliveries=5)
    assert worker.drain() == {"unknown_job": 1}
    assert pending_of(real_redis) == 1
    assert dead_letters(real_redis) == []

    _job(database)  # the API stores the job a moment later
    time.sleep(0.01)
    assert worker.drain() == {"applied": 1}
    assert pending_of(real_redis) == 0
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"round": 1}


def test_unknown_client_is_retried_then_applied_once_the_uuid_is_stored(real_redis, database):
    _job(database)
    entry = {**GOOD, "type": "client.metrics", "client_uuid": "c-2"}
    publish(real_redis, [entry])
    worker = make_worker(real_redis, database, retry_idle_ms=1)
    assert worker.drain() == {"unknown_client": 1}
    database["job"].update_one({"_id": JOB}, {"$push": {"clients_info": {"uuid": "c-2"}}})
    time.sleep(0.01)
    assert worker.drain() == {"applied": 1}
    assert json.loads(job_of(database, JOB)["clients_info"][1]["metrics"]) == {"round": 1}


def test_client_uuid_must_match_exactly(real_redis, database):
    _job(database)
    publish(real_redis, [{**GOOD, "type": "client.metrics", "client_uuid": "c-"}])
    counts = make_worker(real_redis, database, max_deliveries=1).drain()
    assert counts == {"unknown_client": 1}
    assert job_of(database, JOB)["clients_info"][0]["metrics"] is None


def test_unknown_job_is_dead_lettered_after_max_deliveries(real_redis, database):
    [entry_id] = publish(real_redis, [GOOD])
    worker = make_worker(real_redis, database, retry_idle_ms=1, max_deliveries=3)
    seen = []
    for _ in range(3):
        time.sleep(0.005)
        seen.append(worker.drain())
    assert seen == [{"unknown_job": 1}] * 3
    [letter] = dead_letters(real_redis)
    assert (letter["dead_reason"], letter["deliveries"], letter["origin_id"]) == (
        "unknown_job",
        "3",
        entry_id,
    )
    assert pending_of(real_redis) == 0
    time.sleep(0.005)
    assert worker.drain() == {}


def test_entry_trimmed_while_pending_is_lost_and_acknowledged(real_redis, database):
    _job(database)
    ids = publish(real_redis, [GOOD, GOOD])
    dying = make_worker(real_redis, database, consumer="dying")
    dying.stream.ensure_group()
    assert len(dying.stream.read_new(10, None)) == 2  # read, then the process dies
    real_redis.xdel(STREAM, ids[0])
    survivor = make_worker(real_redis, database, consumer="survivor", claim_idle_ms=1)
    time.sleep(0.005)
    assert survivor.drain() == {"lost": 1, "applied": 1}
    assert pending_of(real_redis) == 0
    assert dead_letters(real_redis) == []


field_names = st.sampled_from(
    ["v", "type", "job_id", "client_uuid", "metrics", "status", "origin_id", "x"]
)
field_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            "1",
            "2",
            "0",
            "server.metrics",
            "client.metrics",
            "job.status",
            JOB,
            "c-1",
            "{}",
            '{"a": NaN}',
            "[]",
            "IN_PROGRESS",
            "FINISHED_WITH_ERROR",
            "1-1",
            "99999999999999999999-0",
            "18446744073709551616-0",
            "",
        ]
    ),
    st.text(max_size=30),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.lists(st.dictionaries(field_names, field_values, min_size=1), max_size=12))
def test_fuzzed_entries_never_crash_and_each_ends_in_one_outcome(fake_redis, database, entries):
    fake_redis.flushall()
    database["job"].delete_many({})
    _job(database)
    for fields in entries:
        fake_redis.xadd(STREAM, fields)
    counts = make_worker(fake_redis, database, batch_size=5, max_deliveries=1).drain()
    assert sum(counts.values()) == len(entries)
    assert pending_of(fake_redis) == 0
    dead_reasons = [letter["dead_reason"] for letter in dead_letters(fake_redis)]
    expected_dead = sum(
        n
        for outcome, n in counts.items()
        if outcome in {"invalid", "unsupported_version", "unknown_job", "unknown_client"}
    )
    assert len(dead_reasons) == expected_dead


class FlakyDatabase:
    """A database whose collections raise like an unreachable MongoDB while ``down``."""

    def __init__(self, database, failures):
        self.database = database
        self.failures = failures  # errors to raise, one per call, before recovering
        self.calls = 0

    def __getitem__(self, name):
        return FlakyCollection(self, self.database[name])

    def command(self, *args, **kwargs):
        return self.database.command(*args, **kwargs)


class FlakyCollection:
    def __init__(self, owner, collection):
        self.owner = owner
        self.collection = collection

    def _maybe_fail(self):
        self.owner.calls += 1
        if self.owner.failures:
            raise self.owner.failures.pop(0)

    def update_one(self, *args, **kwargs):
        self._maybe_fail()
        return self.collection.update_one(*args, **kwargs)

    def find_one(self, *args, **kwargs):
        self._maybe_fail()
        return self.collection.find_one(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.collection, name)


def test_mongodb_outage_loses_nothing_and_dead_letters_nothing(
    real_redis, database, job_document, sample_entries
):
    database["job"].insert_one(job_document)
    publish(real_redis, sample_entries)
    failures = [AutoReconnect("connection reset")] * 6 + [
        ServerSelectionTimeoutError("no servers")
    ] * 6
    flaky = FlakyDatabase(database, list(failures))
    worker = make_worker(real_redis, flaky, batch_size=5, backoff_initial_s=0.05, backoff_max_s=0.4)

    started = time.monotonic()
    counts = worker.drain()

    assert time.monotonic() - started > 0.3  # it did back off instead of spinning
    assert flaky.failures == []
    assert sum(counts.values()) == len(sample_entries)
    assert set(counts) <= {"applied", "coalesced"}
    assert dead_letters(real_redis) == []
    assert pending_of(real_redis) == 0
    document = job_of(database, job_document["_id"])
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    assert "shutdown" in json.loads(document["server_metrics"])


def test_stop_during_an_outage_acknowledges_nothing(real_redis, database):
    _job(database)
    publish(real_redis, [GOOD])
    flaky = FlakyDatabase(database, [AutoReconnect("down")] * 1000)
    worker = make_worker(real_redis, flaky, backoff_initial_s=0.01, backoff_max_s=0.02)
    import threading

    threading.Timer(0.3, worker.stop).start()
    assert worker.drain() == {}
    assert pending_of(real_redis) == 1
    assert dead_letters(real_redis) == []


def test_an_entry_another_worker_claimed_meanwhile_stays_pending_for_it(real_redis, database):
    real_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"}
    )
    a = make_worker(real_redis, database, consumer="a", retry_idle_ms=1)
    assert a.drain() == {"unknown_job": 1}
    stale = real_redis.xpending_range(STREAM, "florist-worker", "-", "+", 10, consumername="a")
    # Between a's XPENDING and a's XCLAIM, b claims the entry.
    real_redis.xclaim(STREAM, "florist-worker", "b", 0, [stale[0]["message_id"]])
    original = a.stream.client.xpending_range
    a.stream.client.xpending_range = lambda *args, **kwargs: stale
    try:
        # b's claim just reset the entry's idle time, so a's XCLAIM (min idle 1 s) skips it
        assert a.stream.claim_own_retries(1_000, 10) == []
    finally:
        a.stream.client.xpending_range = original
    assert pending_of(real_redis, "b") == 1  # still pending, for b to retry


class FailingOver:
    """A client whose first reads fail as a demoted primary's do during a failover."""

    def __init__(self, client, failures):
        self._client = client
        self._failures = failures

    def xreadgroup(self, *args, **kwargs):
        if self._failures:
            self._failures -= 1
            raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
        return self._client.xreadgroup(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_read_only_replica_during_a_failover_is_waited_out_like_an_outage(fake_redis, database):
    database["job"].insert_one({"_id": JOB, "status": "NOT_STARTED"})
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"}
    )
    worker = make_worker(FailingOver(fake_redis, 3), database)
    assert worker.drain() == {"applied": 1}


class FailsOnceAfter(MongoJobStore):
    """One update at a time; the connection drops once, after ``after`` updates."""

    def __init__(self, database, after):
        super().__init__(database, batched=False)
        self.after = after
        self.applied = 0
        self.failed = False

    def apply(self, event, position, *, dry_run=False):
        if self.applied == self.after and not self.failed:
            self.failed = True
            raise StoreUnavailable("connection reset")
        self.applied += 1
        return super().apply(event, position, dry_run=dry_run)


def test_an_outage_part_way_through_a_batch_counts_each_entry_as_it_first_took_effect(
    fake_redis, database
):
    """The two updates made before the outage are sent again after it (the guards make
    them no-ops) and still count as applied, not duplicate."""
    clients = [{"uuid": "c1"}, {"uuid": "c2"}]
    database["job"].insert_one({"_id": "j", "status": "NOT_STARTED", "clients_info": clients})
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": "j", "status": "IN_PROGRESS"}
    )
    fake_redis.xadd(STREAM, {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "{}"})
    for uuid in ("c1", "c2"):
        fields = {"v": "1", "type": "client.metrics", "job_id": "j", "client_uuid": uuid}
        fake_redis.xadd(STREAM, {**fields, "metrics": "{}"})
    store = FailsOnceAfter(database, after=2)

    counts = Worker(fake_redis, None, worker_settings(), store=store).drain()

    assert counts == {"applied": 4}
    assert store.failed and store.applied == 6  # the first two, twice
    assert pending_of(fake_redis) == 0
