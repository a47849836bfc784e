"""Hostile and careless producers: no entry can stop the worker, forge history, or be dropped.

The searching tests generate field maps from arbitrary bytes, invalid UTF-8, any
Unicode (non-ASCII digits, escaped lone surrogates), numbers no double holds, extreme
nesting and sizes, bookkeeping-like field names and forged ``origin_id`` s, mixed
with valid events. They check, for every example:

* planning never raises, every entry gets exactly one outcome, and an entry's outcome
  does not depend on how the stream is cut into batches (``coalesced`` vs ``applied``
  aside);
* every update built is one a real MongoDB accepts, BSON encoding included
  (tests/mongo_checks.py), and every stored metrics text is strict JSON in UTF-8;
* the whole path (``Worker.drain`` on Redis and MongoDB doubles) raises nothing,
  dead-letters bad entries with all their fields intact, leaves documents as if the
  bad entries had never been written, and applies the good entries behind them.

``FLORIST_FUZZ_SCALE=N`` multiplies every example budget (``./dev fuzz`` sets it).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import bson
import fakeredis
import mongomock_ng
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.mongo_checks import CheckingDatabase, check_update_shape
from tests.redis_server import RedisServer
from tests.support import DEAD, GROUP, STREAM, dead_letters, job_of, make_worker, requeued
from worker import effects
from worker.batch import plan_batch
from worker.deadletter import list_dead_letters, requeue
from worker.events import Limits
from worker.letters import dead_letter_fields, original_fields
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.replay import replay
from worker.requeues import RequeueRecord, digest_of
from worker.settings import Settings
from worker.store import JobStore
from worker.stream import Entry

SCALE = int(os.environ.get("FLORIST_FUZZ_SCALE", "1"))
JOB = "job-h"
CLIENTS = ("c-1", "c-2")
LIMITS = Limits(max_entry_bytes=64 * 1024, max_metrics_depth=32)

# ---------------------------------------------------------------------------- strategies

NASTY_TEXT = [
    "²",  # str.isdigit() says yes, int() says no
    "٣",
    "\uff11",  # fullwidth one
    "1\n",
    " 1",
    "",
    "\x00",
    "NaN",
    "-0",
    "99999999999999999999999-0",
    "1-99999999999999999999999",
    "١٢-٣",
]
NASTY_METRICS = [
    '{"a":NaN,"b":"\\ud800"}',  # re-encoding after NaN must not produce a lone surrogate
    '{"\\udc00":Infinity}',
    '{"a":"\\ud83d\\ude00","b":-Infinity}',
    '{"a":1e400}',
    '{"a":-1e400,"b":[1e999]}',
    '{"a":' + "9" * 400 + "}",
    '{"a":' + "9" * 5000 + "}",
    '{"a":1} trailing',
    '{"a":1}{"b":2}',
    "[1,2]",
    '"text"',
    "null",
    "",
    "{",
    '{"a":' * 40 + "1" + "}" * 40,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "[" * 5000 + "]" * 5000,
    '{"fit_end":"t","x":NaN}',
    '{"a":"\\u0000"}',
    '{"a":1,"a":2}',
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
metrics_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _metrics_text(value: dict[str, Any]) -> str:
    return json.dumps(value)  # Python's own spelling: bare NaN/Infinity included


@st.composite
def good_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    kind = draw(st.sampled_from(["server", "client", "status"]))
    fields = {"v": "1", "job_id": JOB}
    if kind == "server":
        metrics = draw(metrics_objects)
        if draw(st.booleans()) and draw(st.booleans()):
            metrics["fit_end"] = "t"
        fields.update(type="server.metrics", metrics=_metrics_text(metrics))
    elif kind == "client":
        fields.update(
            type="client.metrics",
            client_uuid=draw(st.sampled_from(CLIENTS)),
            metrics=_metrics_text(draw(metrics_objects)),
        )
    else:
        status = draw(st.sampled_from(["IN_PROGRESS", "FINISHED_SUCCESSFULLY"]))
        fields.update(type="job.status", status=status)
    return {key.encode(): value.encode() for key, value in fields.items()}


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


nasty_values = st.one_of(
    st.sampled_from(NASTY_TEXT).map(_utf8),
    st.sampled_from(NASTY_METRICS).map(_utf8),
    st.binary(max_size=12),
    st.text(max_size=12).map(_utf8),
    st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"x" * 70_000]),
)
field_names = st.one_of(
    st.sampled_from(
        [
            *(b"v", b"type", b"job_id", b"client_uuid", b"metrics", b"status"),
            *(b"error_message", b"origin_id", b"requeue_token", b"sent_at"),
            *(b"dead_reason", b"dead_error", b"origin_stream", b"deliveries", b"dead_at"),
            *(b"dead_field:v", b"dead_field:dead_x", b"dead_", b"x"),
        ]
    ),
    st.binary(min_size=1, max_size=8),
)


@st.composite
def hostile_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    how = draw(st.sampled_from(["arbitrary", "one field", "extra fields", "forged origin"]))
    if how == "arbitrary":
        return draw(st.dictionaries(field_names, nasty_values, min_size=1, max_size=6))
    fields = draw(good_entries())
    if how == "one field":
        fields[draw(field_names)] = draw(nasty_values)
    elif how == "extra fields":
        fields.update(draw(st.dictionaries(field_names, st.binary(max_size=6), max_size=4)))
    else:
        fields[b"origin_id"] = draw(st.sampled_from([b"1-0", b"0-1", b"5-0"]))
        if draw(st.booleans()):
            fields[b"requeue_token"] = draw(st.binary(max_size=8))
    return fields


any_entries = st.one_of(good_entries(), hostile_entries())


def assert_browser_json(text: str) -> None:
    """What ``JSON.parse`` reads to the same values and BSON stores: UTF-8, no bare
    NaN/Infinity tokens, no number that overflows a double."""
    bson.encode({"text": text})
    text.encode("utf-8")

    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} in stored text {text!r}")

    def checked_float(literal: str) -> float:
        value = float(literal)
        assert math.isfinite(value), f"{literal} overflows a double in {text!r}"
        return value

    def checked_int(literal: str) -> int:
        assert abs(int(literal)) <= sys.float_info.max, f"{literal[:20]}... overflows"
        return int(literal)

    json.loads(text, parse_constant=refuse, parse_float=checked_float, parse_int=checked_int)


def _ids(count: int) -> list[str]:
    return [f"{1_700_000_000_000 + index}-0" for index in range(count)]


def _dead(planned: Any) -> bool:
    return planned.outcome is not None and planned.outcome.dead_at_once


# ---------------------------------------------------------------- planning, no I/O


@hsettings(
    max_examples=2000 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(any_entries, min_size=1, max_size=16))
def test_planning_never_raises_and_does_not_depend_on_batching(fields_list):
    entries = [Entry(i, f) for i, f in zip(_ids(len(fields_list)), fields_list, strict=True)]
    whole = plan_batch(entries, LIMITS)
    alone = [plan_batch([entry], LIMITS)[0] for entry in entries]
    sevens = [
        p
        for start in range(0, len(entries), 7)
        for p in plan_batch(entries[start : start + 7], LIMITS)
    ]

    assert len(whole) == len(alone) == len(sevens) == len(entries)
    for together, by_sevens, single in zip(whole, sevens, alone, strict=True):
        assert together.outcome is not Outcome.INTERNAL_ERROR, together.error
        assert _dead(together) == _dead(single) == _dead(by_sevens)
        assert together.error == single.error
        if together.coalesced_into:
            assert single.outcome is None and single.event is not None
        if single.event is None:
            continue
        event, position = single.event, single.position
        text = getattr(event, "metrics_text", None)
        if text is not None:
            assert_browser_json(text)
        write = effects.first_write(event, position)
        if write is not None:
            check_update_shape(write.filter, write.update, write.array_filters)
        for document in _documents_to_classify_against():
            decision = effects.after_miss(event, position, document)
            if isinstance(decision, effects.Write):
                check_update_shape(decision.filter, decision.update, decision.array_filters)


def _documents_to_classify_against() -> list[dict[str, Any]]:
    key = StreamPosition(1, 0).key
    clients = [{"uuid": uuid, effects.CLIENT_POSITION: key} for uuid in CLIENTS]
    return [
        {"_id": JOB, "status": "NOT_STARTED", "clients_info": [{"uuid": CLIENTS[0]}]},
        {
            "_id": JOB,
            "status": "FINISHED_SUCCESSFULLY",
            effects.STATUS_POSITION: key,
            effects.SERVER_POSITION: key,
            "clients_info": clients,
        },
        {"_id": JOB, "status": "IN_PROGRESS", effects.SERVER_POSITION: ["odd"], "clients_info": 7},
    ]


@given(st.dictionaries(field_names, st.binary(max_size=8), min_size=1, max_size=8))
def test_a_dead_letter_gives_back_exactly_the_original_fields(fields):
    letter = dead_letter_fields(
        fields, reason="invalid", error="e", origin_id="1-0", origin_stream=STREAM, deliveries=1
    )
    assert original_fields(letter) == fields
    assert letter[b"dead_reason"] == b"invalid" and letter[b"origin_id"] == b"1-0"


def test_non_finite_numbers_in_any_spelling_are_stored_as_the_contract_strings():
    from worker.events import parse_entry

    def stored(text: str) -> Any:
        fields = {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": text}
        return json.loads(parse_entry(fields).metrics_text)

    assert stored('{"a":1e400,"b":-1e400,"c":NaN}') == {
        "a": "Infinity",
        "b": "-Infinity",
        "c": "NaN",
    }
    assert stored('{"a":' + "9" * 400 + "}") == {"a": "Infinity"}
    assert stored('{"a":NaN,"b":"\\ud800"}') == {"a": "NaN", "b": "\ud800"}
    assert stored('{"a": 1.5, "b": "é"}') == {"a": 1.5, "b": "é"}


# ------------------------------------------------------------------ the whole path


def _fresh(batch_size: int) -> tuple[redis.Redis, Any, Any]:
    client = fakeredis.FakeRedis()
    database = CheckingDatabase(mongomock_ng.MongoClient()["hostile"])
    database["job"].insert_one(
        {
            "_id": JOB,
            "status": "NOT_STARTED",
            "clients_info": [{"uuid": uuid, "metrics": None} for uuid in CLIENTS],
        }
    )
    worker = make_worker(client, database, batch_size=batch_size, max_deliveries=1)
    return client, database, worker


def _drain(fields_list, batch_size, keep=None):
    client, database, worker = _fresh(batch_size)
    ids = _ids(len(fields_list))
    for entry_id, fields in zip(ids, fields_list, strict=True):
        if keep is None or entry_id in keep:
            client.xadd(STREAM, fields, id=entry_id)
    counts = worker.drain()
    letters = {entry_id.decode(): fields for entry_id, fields in client.xrange(DEAD)}
    return client, database, counts, letters, ids


@hsettings(
    max_examples=120 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(any_entries, min_size=1, max_size=12), st.sampled_from([1, 7, 200]))
def test_no_entry_stops_the_worker_or_touches_a_document_when_bad(fields_list, batch_size):
    client, database, counts, letters, ids = _drain(fields_list, batch_size)

    assert sum(counts.values()) == len(fields_list)  # exactly one outcome each
    assert int(client.xpending(STREAM, GROUP)["pending"]) == 0
    dead_origins = {}
    for letter in letters.values():
        origin = letter[b"origin_id"].decode()
        dead_origins[origin] = letter
    published = dict(zip(ids, fields_list, strict=True))
    for origin, letter in dead_origins.items():
        assert original_fields(letter) == published[origin]  # every field intact
        assert letter[b"dead_reason"].decode() != Outcome.INTERNAL_ERROR.value, letter
    for entry_id, fields in published.items():
        if fields == _as_good(fields):
            assert entry_id not in dead_origins, (fields, dead_origins.get(entry_id))

    document = job_of(database, JOB)
    for text in [document.get("server_metrics")] + [
        c.get("metrics") for c in document["clients_info"]
    ]:
        if text is not None:
            assert_browser_json(text)

    # The same stream without the entries that were dead-lettered gives the same document.
    kept = {entry_id for entry_id in ids if entry_id not in dead_origins}
    _c, reference_db, _counts, reference_letters, _ids2 = _drain(fields_list, batch_size, kept)
    assert job_of(reference_db, JOB) == document
    # Only a snapshot that was coalesced behind a dead-lettered one (for a job or client
    # that does not exist) can be dead-lettered in the reference run, and for that reason.
    reasons = {letter[b"dead_reason"] for letter in reference_letters.values()}
    assert reasons <= {b"unknown_job", b"unknown_client"}


def _good_metrics(raw: bytes) -> bool:
    """Python's own parser reads it as an object no deeper than the limit."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False

    def depth(item: Any) -> int:
        if isinstance(item, dict):
            return 1 + max(map(depth, item.values()), default=0)
        if isinstance(item, list):
            return 1 + max(map(depth, item), default=0)
        return 0

    return isinstance(value, dict) and depth(value) <= LIMITS.max_metrics_depth


def _as_good(fields: dict[bytes, bytes]) -> dict[bytes, bytes] | None:
    """``fields`` if it is a good entry by construction (what good_entries() makes)."""
    names = set(fields)
    base = {b"v", b"type", b"job_id"}
    if fields.get(b"v") != b"1" or fields.get(b"job_id") != JOB.encode():
        return None
    kind = fields.get(b"type")
    if b"metrics" in fields and not _good_metrics(fields[b"metrics"]):
        return None
    if kind == b"server.metrics" and names == base | {b"metrics"}:
        return fields
    if kind == b"client.metrics" and names == base | {b"metrics", b"client_uuid"}:
        return fields if fields[b"client_uuid"] in {c.encode() for c in CLIENTS} else None
    if kind == b"job.status" and names == base | {b"status"}:
        return fields if fields[b"status"] in (b"IN_PROGRESS", b"FINISHED_SUCCESSFULLY") else None
    return None


@hsettings(
    max_examples=60 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(any_entries, min_size=1, max_size=20))
def test_batch_sizes_1_7_and_200_dead_letter_the_same_entries(fields_list):
    runs = [_drain(fields_list, size) for size in (1, 7, 200)]
    dead_sets = [
        {(letter[b"origin_id"], letter[b"dead_reason"]) for letter in letters.values()}
        for _c, _db, _counts, letters, _ids in runs
    ]
    documents = [job_of(database, JOB) for _c, database, _counts, _letters, _ids in runs]
    assert dead_sets[0] == dead_sets[1] == dead_sets[2]
    assert documents[0] == documents[1] == documents[2]


def test_an_invalid_snapshot_is_dead_lettered_even_when_a_newer_one_follows():
    older = {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"a":1} trailing'}
    newer = {**older, "metrics": '{"a":2}'}
    fields_list = [{k.encode(): v.encode() for k, v in fields.items()} for fields in (older, newer)]
    for size in (1, 200):
        _client, database, counts, _letters, _ids = _drain(fields_list, size)
        assert counts == {"invalid": 1, "applied": 1}
        assert json.loads(job_of(database, JOB)["server_metrics"]) == {"a": 2}


# ------------------------------------------------------------ forged history


def _finished_job(client: redis.Redis, database: Any) -> None:
    database["job"].insert_one({"_id": JOB, "status": "IN_PROGRESS", "clients_info": []})
    client.xadd(
        STREAM, {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"v":2}'}, id="10-0"
    )
    client.xadd(
        STREAM,
        {"v": "1", "type": "job.status", "job_id": JOB, "status": "FINISHED_SUCCESSFULLY"},
        id="11-0",
    )


@pytest.mark.parametrize("token", [None, "guessed", "real-but-for-another-origin"])
def test_a_producer_cannot_backdate_an_entry(fake_redis, database, token):
    _finished_job(fake_redis, database)
    make_worker(fake_redis, database).drain()
    fake_redis.hset(f"{STREAM}:requeued", "real-but-for-another-origin", "3-0")
    forged_status = {
        "v": "1",
        "type": "job.status",
        "job_id": JOB,
        "status": "FINISHED_WITH_ERROR",
        "error_message": "forged",
        "origin_id": "1-0",
    }
    forged_snapshot = {
        "v": "1",
        "type": "server.metrics",
        "job_id": JOB,
        "metrics": '{"v":0}',
        "origin_id": "1-0",
    }
    for fields in (forged_status, forged_snapshot):
        if token is not None:
            fields["requeue_token"] = token
        fake_redis.xadd(STREAM, fields)

    assert make_worker(fake_redis, database).drain() == {"invalid": 2}
    document = job_of(database, JOB)
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    assert document["error_message"] is None
    assert json.loads(document["server_metrics"]) == {"v": 2}
    assert all("vouched" in letter["dead_error"] for letter in dead_letters(fake_redis))


def test_an_operators_requeue_still_restores_stream_order(fake_redis, database):
    _finished_job(fake_redis, database)
    make_worker(fake_redis, database).drain()
    old = requeued(
        fake_redis, {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"v":1}'}, "9-0"
    )
    fake_redis.xadd(STREAM, old)
    assert make_worker(fake_redis, database).drain() == {"duplicate": 1}
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"v": 2}


def test_requeue_writes_back_every_original_field_whatever_its_name(fake_redis, database):
    database["job"].insert_one({"_id": JOB, "status": "IN_PROGRESS", "clients_info": []})
    original = {
        "v": "1",
        "type": "server.metrics",
        "job_id": JOB,
        "metrics": "{broken",
        "dead_reason": "mine",
        "deliveries": "many",
        "origin_stream": "elsewhere",
        "dead_field:x": "y",
        "dead_at": "noon",
    }
    entry_id = fake_redis.xadd(STREAM, original).decode()
    assert make_worker(fake_redis, database).drain() == {"invalid": 1}
    [letter] = list_dead_letters(fake_redis, settings=Settings(consumer="t"))
    assert letter.reason == "invalid" and letter.origin_id == entry_id
    assert letter.original_fields() == {k.encode(): v.encode() for k, v in original.items()}

    assert requeue(fake_redis, settings=Settings(consumer="t")) == 1
    _new_id, fields = fake_redis.xrange(STREAM)[-1]
    token = fields.pop(b"requeue_token")
    assert fields == {
        **{k.encode(): v.encode() for k, v in original.items()},
        b"origin_id": entry_id.encode(),
    }
    record = RequeueRecord.parse(fake_redis.hget(f"{STREAM}:requeued", token).decode())
    assert record == RequeueRecord(entry_id, digest_of(fields))


def test_the_producer_acl_cannot_write_requeue_records_or_read_tokens(tmp_path):
    from tests.test_deploy_files import acl_rules

    server = RedisServer(tmp_path / "acl")
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        for name, words in acl_rules().items():
            admin.execute_command("ACL", "SETUSER", name, *words)
        producer = redis.Redis(port=server.port, username="florist-producer", password="CHANGE_ME")
        worker = redis.Redis(port=server.port, username="florist-worker", password="CHANGE_ME")
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.hset(f"{STREAM}:requeued", "token", "1-0")
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.xrange(STREAM)
        worker.hset(f"{STREAM}:requeued", "token", "1-0")  # the operator's requeue may
        assert worker.hmget(f"{STREAM}:requeued", ["token"]) == [b"1-0"]
    finally:
        server.stop()


# ------------------------------------------------------------ the last-resort guard


class ExplodingStore(JobStore):
    """Raises something nobody foresaw for one job."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def apply(self, event: Any, position: Any, *, dry_run: bool = False) -> Outcome:
        if event.job_id == "boom":
            raise RuntimeError("kaboom")
        return self.inner.apply(event, position, dry_run=dry_run)

    def ping(self) -> None:
        return None


def test_an_unexpected_exception_dead_letters_that_entry_and_the_rest_go_on(fake_redis, database):
    from tests.support import settings as test_settings
    from worker.consumer import Worker
    from worker.store import MongoJobStore

    database["job"].insert_one({"_id": JOB, "status": "NOT_STARTED", "clients_info": []})
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": "boom", "status": "IN_PROGRESS"}
    )
    fake_redis.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"}
    )
    from worker.prometheus import PrometheusObserver
    from worker.stats import collect_stats

    observer = PrometheusObserver()
    worker = Worker(
        fake_redis,
        None,
        test_settings(),
        store=ExplodingStore(MongoJobStore(database)),
        observers=[observer],
    )

    assert worker.drain() == {"internal_error": 1, "applied": 1}
    assert (
        observer.registry.get_sample_value(
            "florist_worker_events_total", {"outcome": "internal_error", "type": "job.status"}
        )
        == 1
    )
    stats = collect_stats(fake_redis, test_settings())
    assert stats.dead_letters_by_reason == {"internal_error": 1}
    [letter] = dead_letters(fake_redis)
    assert letter["dead_reason"] == "internal_error"
    assert letter["dead_error"] == "RuntimeError: kaboom"
    assert job_of(database, JOB)["status"] == "IN_PROGRESS"

    counts = replay(
        fake_redis, None, store=ExplodingStore(MongoJobStore(database)), settings=test_settings()
    )
    assert counts == {"internal_error": 1, "duplicate": 1}


def test_replay_and_requeue_go_through_poison_entries(fake_redis, database):
    database["job"].insert_one({"_id": JOB, "status": "NOT_STARTED", "clients_info": []})
    poison = [
        {b"v": "²".encode(), b"type": b"job.status", b"job_id": JOB.encode()},
        {
            b"v": b"1",
            b"type": b"server.metrics",
            b"job_id": JOB.encode(),
            b"metrics": b'{"a":NaN,"b":"\\ud800"}',
        },
        {b"\xff": b"\xfe", b"dead_reason": b"x"},
    ]
    for fields in poison:
        fake_redis.xadd(STREAM, fields)
    counts = make_worker(fake_redis, database, batch_size=200).drain()
    assert counts == {"invalid": 2, "applied": 1}
    assert json.loads(job_of(database, JOB)["server_metrics"]) == {"a": "NaN", "b": "\ud800"}
    assert replay(fake_redis, database, settings=Settings(consumer="t")) == {
        "invalid": 2,
        "duplicate": 1,
    }
    assert requeue(fake_redis, settings=Settings(consumer="t")) == 2
    assert make_worker(fake_redis, database, batch_size=200).drain() == {"invalid": 2}


# -------------------------------------------------------- crash loop, real processes


def _florist_worker() -> str:
    path = Path(sys.executable).with_name("florist-worker")
    if not path.exists():
        pytest.fail(f"the florist-worker command is not installed next to {sys.executable}")
    return str(path)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.redis_server
def test_a_poison_entry_is_dead_lettered_by_a_running_worker_and_by_one_that_claims_it(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        client = redis.Redis(port=server.port)
        poison_version = {"v": "²", "type": "job.status", "job_id": "j", "status": "IN_PROGRESS"}
        poison_metrics = {
            "v": "1",
            "type": "server.metrics",
            "job_id": "j",
            "metrics": '{"a":NaN,"b":"\\ud800"}',
        }
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        first = client.xadd(STREAM, poison_version).decode()
        # A worker that died holding the first poison entry: it is pending, not acked.
        client.xreadgroup(GROUP, "died", {STREAM: ">"}, count=1)
        second = client.xadd(STREAM, poison_metrics).decode()
        after = client.xadd(
            STREAM, {"v": "1", "type": "job.status", "job_id": "later", "status": "IN_PROGRESS"}
        ).decode()
        environment = {
            **os.environ,
            "FLORIST_REDIS_URL": server.url,
            "FLORIST_MONGODB_URI": "memory://",
            "FLORIST_CONSUMER": "survivor",
            "FLORIST_MAX_DELIVERIES": "1",
            "FLORIST_UNKNOWN_RETRY_S": "0",
            "FLORIST_CLAIM_IDLE_MS": "200",
            "FLORIST_BLOCK_MS": "200",
            "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        }
        process = subprocess.Popen(
            [_florist_worker(), "run"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        processes.append(process)
        _wait(lambda: client.xlen(DEAD) >= 3, 30, "three dead letters")
        assert process.poll() is None  # still running
        reasons = {
            fields[b"origin_id"].decode(): fields[b"dead_reason"].decode()
            for _id, fields in client.xrange(DEAD)
        }
        # The metrics one was a crash before; now it is valid (stored with the escape
        # kept), so like the entry after it, it waits for a job that memory:// lacks.
        assert reasons == {first: "invalid", second: "unknown_job", after: "unknown_job"}
        assert int(client.xpending(STREAM, GROUP)["pending"]) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        server.stop()


def test_counts_of_one_outcome_each_add_up(fake_redis, database):
    """A smoke check of the invariant the property tests search: one outcome per entry."""
    database["job"].insert_one({"_id": JOB, "status": "NOT_STARTED", "clients_info": []})
    for index in range(5):
        fake_redis.xadd(
            STREAM,
            {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": f'{{"i":{index}}}'},
        )
    counts = Counter(make_worker(fake_redis, database, batch_size=3).drain())
    assert counts == Counter({"coalesced": 3, "applied": 2})
