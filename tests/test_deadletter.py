"""Dead letters: listing, requeueing with origin_id kept, dropping; the dlq command."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import mongomock_ng
import pytest
import redis
import structlog
from pymongo.database import Database

from tests.support import make_worker
from worker import deadletter
from worker.cli import main
from worker.commands import dlq
from worker.consumer import Worker
from worker.deadletter import (
    drop,
    find_dead_letters,
    get_dead_letter,
    list_dead_letters,
    requeue,
)
from worker.events import parse_entry
from worker.letters import BOOKKEEPING
from worker.logs import configure_logging
from worker.positions import StreamPosition
from worker.requeues import RequeueRecord
from worker.settings import Settings
from worker.store import MongoJobStore
from worker.stream import DeadLetter, DeadStreamMisconfigured, Entry, dead_letter_entry

STREAM = "florist:events"
DEAD = "florist:events:dead"
JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
BAD_JSON = {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": "{not json"}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stream": STREAM,
        "group": "florist-worker",
        "dead_stream": DEAD,
        "consumer": "dlq-test",
        "max_deliveries": 1,
        "unknown_retry_s": 0,
        "backoff_initial_s": 0.001,
        "backoff_max_s": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


def publish(client: redis.Redis, entries: list[dict[str, str]]) -> list[str]:
    published = []
    for fields in entries:
        entry_id: Any = client.xadd(STREAM, dict[Any, Any](fields))
        published.append(entry_id.decode())
    return published


def stream_entries(client: redis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    raw: Any = client.xrange(stream)
    return [
        (entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
        for entry_id, fields in raw
    ]


def document(database: Database[Any]) -> dict[str, Any]:
    found: dict[str, Any] | None = database["job"].find_one({"_id": JOB})
    assert found is not None
    return found


def letter_for(client: redis.Redis, origin_id: str) -> str:
    """The dead-letter ID of the event first published as ``origin_id``."""
    [letter] = [
        x for x in list_dead_letters(client, settings=settings()) if x.origin_id == origin_id
    ]
    return letter.id


def two_dead_letters(
    client: redis.Redis, database: Database[Any], unknown: dict[str, str]
) -> tuple[str, str]:
    """An invalid entry and an unknown_job one, dead-lettered by a worker."""
    invalid_id, unknown_id = publish(client, [BAD_JSON, unknown])
    counts = Worker(client, database, settings()).drain()
    assert counts == {"invalid": 1, "unknown_job": 1}
    return invalid_id, unknown_id


@pytest.fixture(autouse=True)
def own_logging() -> Iterator[None]:
    """Log to this test's stderr, then put back the previous structlog configuration: a
    command configures logging for the process, and a test that ran a command before
    may have left it pointing at its own captured, now closed, stderr."""
    saved = structlog.get_config()
    configure_logging("info", "console")
    yield
    structlog.configure(**saved)


@pytest.fixture
def unknown_job_entry(sample_entries: list[dict[str, str]]) -> dict[str, str]:
    return {**sample_entries[1], "job_id": "not-created-yet", "sent_at": "2024-11-20T14:00:00Z"}


# --- the Python surface ---------------------------------------------------------------


def test_dead_letters_made_by_a_worker_are_listed_with_their_reason(
    real_redis: redis.Redis, database: Database[Any], unknown_job_entry: dict[str, str]
) -> None:
    invalid_id, unknown_id = two_dead_letters(real_redis, database, unknown_job_entry)

    letters = list_dead_letters(real_redis, settings=settings())

    assert [(x.reason, x.origin_id, x.job_id, x.type) for x in letters] == [
        ("invalid", invalid_id, JOB, "server.metrics"),
        ("unknown_job", unknown_id, "not-created-yet", "server.metrics"),
    ]
    assert [x.deliveries for x in letters] == [1, 1]
    assert "not valid JSON" in (letters[0].error or "")
    assert all(x.dead_at is not None for x in letters)
    assert [
        x.reason for x in list_dead_letters(real_redis, reason="unknown_job", settings=settings())
    ] == ["unknown_job"]
    assert list_dead_letters(real_redis, job_id=JOB, settings=settings()) == letters[:1]
    assert list_dead_letters(real_redis, limit=1, settings=settings()) == letters[:1]


def test_requeue_puts_the_original_fields_back_with_origin_id_and_removes_the_letter(
    real_redis: redis.Redis, database: Database[Any], unknown_job_entry: dict[str, str]
) -> None:
    invalid_id, unknown_id = two_dead_letters(real_redis, database, unknown_job_entry)
    letter_id = letter_for(real_redis, unknown_id)

    assert requeue(real_redis, [letter_id], settings=settings()) == 1

    new_id, fields = stream_entries(real_redis, STREAM)[-1]
    assert StreamPosition.parse(new_id) > StreamPosition.parse(unknown_id)  # at the end
    token = fields.pop("requeue_token")
    assert fields == {**unknown_job_entry, "origin_id": unknown_id}
    record = RequeueRecord.parse(real_redis.hget(STREAM + ":requeued", token).decode())
    assert record is not None and record.origin_id == unknown_id
    written = {key.encode(): value.encode() for key, value in fields.items()}
    assert record.vouches_for(written)
    assert not (set(BOOKKEEPING) - {"origin_id"}) & set(fields)
    assert parse_entry(fields).position(new_id) == StreamPosition.parse(unknown_id)
    assert get_dead_letter(real_redis, letter_id, settings=settings()) is None
    assert [x.origin_id for x in list_dead_letters(real_redis, settings=settings())] == [invalid_id]


def test_requeue_by_reason_and_all(
    real_redis: redis.Redis, database: Database[Any], unknown_job_entry: dict[str, str]
) -> None:
    invalid_id, unknown_id = two_dead_letters(real_redis, database, unknown_job_entry)

    assert requeue(real_redis, reason="invalid", settings=settings()) == 1
    assert [x.reason for x in list_dead_letters(real_redis, settings=settings())] == ["unknown_job"]
    assert requeue(real_redis, settings=settings()) == 1
    assert real_redis.xlen(DEAD) == 0
    origins = [fields["origin_id"] for _, fields in stream_entries(real_redis, STREAM)[2:]]
    assert origins == [invalid_id, unknown_id]
    assert requeue(real_redis, settings=settings()) == 0


def test_a_requeued_entry_that_fails_again_keeps_its_first_id(
    real_redis: redis.Redis, database: Database[Any], unknown_job_entry: dict[str, str]
) -> None:
    invalid_id, _ = two_dead_letters(real_redis, database, unknown_job_entry)
    requeue(real_redis, reason="invalid", settings=settings())

    assert Worker(real_redis, database, settings()).drain() == {"invalid": 1}

    letters = list_dead_letters(real_redis, reason="invalid", settings=settings())
    assert [x.origin_id for x in letters] == [invalid_id]
    assert letters[0].fields()["metrics"] == BAD_JSON["metrics"]


def test_requeue_ignores_unknown_ids_and_find_reports_them(
    real_redis: redis.Redis, database: Database[Any], unknown_job_entry: dict[str, str]
) -> None:
    two_dead_letters(real_redis, database, unknown_job_entry)
    [first, second] = [x.id for x in list_dead_letters(real_redis, settings=settings())]

    found, missing = find_dead_letters(real_redis, [second, "1-1", first], settings=settings())
    assert ([x.id for x in found], missing) == ([first, second], ["1-1"])
    assert requeue(real_redis, ["1-1"], settings=settings()) == 0
    assert real_redis.xlen(DEAD) == 2


def test_requeue_and_drop_go_page_by_page_in_order(real_redis: redis.Redis) -> None:
    origins = []
    for index in range(2 * deadletter.PAGE_SIZE + 7):
        origin = f"{1000 + index}-0"
        reason = "invalid" if index % 3 else "unknown_job"
        fields = {"v": "1", "type": "job.status", "job_id": f"job-{index}", "status": "X"}
        letter = DeadLetter(
            Entry(origin, {k.encode(): v.encode() for k, v in fields.items()}), reason, "test", 1
        )
        real_redis.xadd(DEAD, dead_letter_entry(letter, STREAM))
        origins.append((origin, reason))

    dropped = drop(real_redis, None, reason="unknown_job", settings=settings())
    moved = requeue(real_redis, settings=settings())

    kept = [origin for origin, reason in origins if reason == "invalid"]
    assert dropped == len(origins) - len(kept)
    assert moved == len(kept)
    assert [f["origin_id"] for _, f in stream_entries(real_redis, STREAM)] == kept
    assert real_redis.xlen(DEAD) == 0


def test_drop_by_id_deletes_only_those(
    real_redis: redis.Redis, database: Database[Any], unknown_job_entry: dict[str, str]
) -> None:
    two_dead_letters(real_redis, database, unknown_job_entry)
    [first, second] = [x.id for x in list_dead_letters(real_redis, settings=settings())]

    assert drop(real_redis, [first, "1-1"], settings=settings()) == 1
    assert [x.id for x in list_dead_letters(real_redis, settings=settings())] == [second]
    assert real_redis.exists(STREAM) and real_redis.xlen(STREAM) == 2  # events untouched


def test_requeued_old_snapshot_loses_to_a_newer_one_and_a_newer_one_applies(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    """Requeued entries go to the end of the stream, but the guards compare origin_id."""
    jobs = database["job"]
    # One entry per batch, so that no snapshot is coalesced away before it is dead-lettered.
    worker = Worker(real_redis, database, settings(batch_size=1))
    # 1. The job is not stored yet: the first 10 events are dead-lettered.
    early = publish(real_redis, sample_entries[:10])
    assert worker.drain() == {"unknown_job": 10}
    # 2. The job appears; events 10..19 are applied.
    jobs.insert_one(copy.deepcopy(job_document))
    middle = publish(real_redis, sample_entries[10:20])
    assert worker.drain() == {"applied": 10}
    # 3. The job is briefly missing while the last 18 events arrive: dead-lettered too.
    saved = document(database)
    jobs.delete_one({"_id": JOB})
    late = publish(real_redis, sample_entries[20:])
    assert worker.drain() == {"unknown_job": 18}
    jobs.insert_one(saved)
    ids = early + middle + late

    # An old server snapshot (entry 9) requeued after entry 19's was applied: no effect.
    assert sample_entries[9]["type"] == sample_entries[19]["type"] == "server.metrics"
    assert requeue(real_redis, [letter_for(real_redis, ids[9])], settings=settings()) == 1
    assert worker.drain() == {"duplicate": 1}
    assert document(database) == saved

    # The newer ones (20..37) requeued: they apply, fit_end finishes the job.
    newer = [letter_for(real_redis, entry_id) for entry_id in late]
    assert requeue(real_redis, newer, settings=settings()) == 18
    assert worker.drain() == {"applied": 18}
    assert document(database)["status"] == "FINISHED_SUCCESSFULLY"
    # The rest of the old ones afterwards: nothing changes.
    after_newer = document(database)
    assert requeue(real_redis, settings=settings()) == 9
    assert worker.drain() == {"duplicate": 8, "rejected_transition": 1}
    assert document(database) == after_newer

    # Same document as all 38 events applied once, in their first order.
    reference: Database[Any] = mongomock_ng.MongoClient()["reference"]
    reference["job"].insert_one(copy.deepcopy(job_document))
    store = MongoJobStore(reference)
    for entry_id, fields in zip(ids, sample_entries, strict=True):
        event = parse_entry(fields)
        store.apply(event, event.position(entry_id))
    expected = reference["job"].find_one({"_id": JOB})
    assert expected is not None and expected["status"] == "FINISHED_SUCCESSFULLY"
    assert document(database) == expected
    assert real_redis.xlen(DEAD) == 0


# --- the command line -----------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """``florist-worker dlq ...`` through the real entry point."""
    return main(["dlq", *argv])


def test_cli_list_is_a_table_with_reason_job_type_deliveries_and_age(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    unknown_job_entry: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    two_dead_letters(real_redis, database, unknown_job_entry)
    [first, second] = [x.id for x in list_dead_letters(real_redis, settings=settings())]

    assert run_cli(["list", "--redis-url", redis_url]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "REASON", "JOB", "TYPE", "DELIVERIES", "AGE"]
    assert re.fullmatch(rf"{first}\s+invalid\s+{JOB}\s+server\.metrics\s+1\s+\d+s", lines[1])
    assert re.fullmatch(
        rf"{second}\s+unknown_job\s+not-created-yet\s+server\.metrics\s+1\s+\d+s", lines[2]
    )
    assert lines[3] == f"2 shown; 2 in {DEAD}"

    assert run_cli(["list", "--redis-url", redis_url, "--reason", "unknown_job"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[1] for row in rows[1:-1]] == ["unknown_job"]


def test_cli_list_of_an_empty_dead_letter_stream(
    real_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["list", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.strip() == f"no dead letters in {DEAD} (0 in all)"


def test_cli_show_prints_every_field(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    unknown_job_entry: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, unknown_id = two_dead_letters(real_redis, database, unknown_job_entry)
    letter_id = letter_for(real_redis, unknown_id)

    assert run_cli(["show", letter_id, "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    shown = dict(line.split(None, 1) for line in out.splitlines())
    assert shown["id"] == letter_id
    assert shown["dead_reason"] == "unknown_job"
    assert shown["origin_id"] == unknown_id
    assert shown["metrics"] == unknown_job_entry["metrics"]
    assert {"dead_error", "origin_stream", "deliveries", "dead_at", "sent_at"} <= set(shown)

    assert run_cli(["show", letter_id, "--json", "--redis-url", redis_url]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["fields"] == get_dead_letter(real_redis, letter_id, settings=settings()).fields()  # type: ignore[union-attr]


def test_cli_show_of_a_missing_or_malformed_id(
    real_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["show", "1-1", "--redis-url", redis_url]) == 1
    assert "no dead letter 1-1" in capsys.readouterr().err
    assert run_cli(["show", "yesterday", "--redis-url", redis_url]) == 2
    assert "yesterday" in capsys.readouterr().err


def test_cli_requeue_by_id_all_and_reason(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    unknown_job_entry: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    two_dead_letters(real_redis, database, unknown_job_entry)
    [first, second] = [x.id for x in list_dead_letters(real_redis, settings=settings())]

    assert run_cli(["requeue", "--redis-url", redis_url]) == 2
    assert "IDs, --all or --reason" in capsys.readouterr().err
    assert run_cli(["requeue", first, "--all", "--redis-url", redis_url]) == 2
    capsys.readouterr()
    assert real_redis.xlen(DEAD) == 2

    assert run_cli(["requeue", first, "1-1", "--redis-url", redis_url]) == 1
    captured = capsys.readouterr()
    assert f"requeued 1 dead letter(s) to {STREAM}" in captured.out
    assert f"not in {DEAD}: 1-1" in captured.err
    assert run_cli(["requeue", "--reason", "invalid", "--redis-url", redis_url]) == 0
    assert "requeued 0 dead letter(s)" in capsys.readouterr().out
    assert run_cli(["requeue", "--all", "--redis-url", redis_url]) == 0
    assert "requeued 1 dead letter(s)" in capsys.readouterr().out
    assert [x.id for x in list_dead_letters(real_redis, settings=settings())] == []
    assert real_redis.xlen(STREAM) == 4
    assert second  # both were moved, the second by --all


def test_cli_drop_all_needs_yes(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    unknown_job_entry: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    two_dead_letters(real_redis, database, unknown_job_entry)
    [first, _second] = [x.id for x in list_dead_letters(real_redis, settings=settings())]

    assert run_cli(["drop", "--all", "--redis-url", redis_url]) == 2
    assert "--yes" in capsys.readouterr().err
    assert run_cli(["drop", "--reason", "invalid", "--redis-url", redis_url]) == 2
    capsys.readouterr()
    assert real_redis.xlen(DEAD) == 2

    assert run_cli(["drop", first, "--redis-url", redis_url]) == 0  # by ID: no --yes needed
    assert "dropped 1 dead letter(s)" in capsys.readouterr().out
    assert run_cli(["drop", "--all", "--yes", "--redis-url", redis_url]) == 0
    assert "dropped 1 dead letter(s)" in capsys.readouterr().out
    assert real_redis.xlen(DEAD) == 0
    assert real_redis.xlen(STREAM) == 2  # the events stream is not touched


def test_cli_reports_an_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    assert run_cli(["list", "--redis-url", url]) == 1
    assert f"Redis {url}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (None, "-"),
        (timedelta(seconds=42), "42s"),
        (timedelta(minutes=5, seconds=59), "5m"),
        (timedelta(hours=3), "3h"),
        (timedelta(days=2, hours=23), "2d"),
        (timedelta(seconds=-3), "0s"),
    ],
)
def test_ages_are_shown_in_their_largest_whole_unit(age: timedelta | None, text: str) -> None:
    assert dlq.format_age(age) == text


def test_a_dead_letter_key_of_another_type_stops_the_worker_before_anything_is_acked(
    real_redis, database
):
    real_redis.set(DEAD, "not a stream")
    real_redis.xadd(STREAM, {"v": "1"})
    with pytest.raises(DeadStreamMisconfigured, match="holds a string"):
        make_worker(real_redis, database).drain()
    assert real_redis.xlen(STREAM) == 1
    assert real_redis.get(DEAD) == b"not a stream"
