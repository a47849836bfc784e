"""Replay of stream history: bounds, idempotence, restore-from-backup, outages, CLI."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock_ng
import pymongo
import pytest
import redis
import structlog
from pymongo.database import Database

from tests.redis_server import RedisServer, free_port
from worker.cli import main
from worker.commands import replay as replay_command
from worker.consumer import Worker
from worker.entities import Job
from worker.events import Event
from worker.logs import configure_logging
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.progress import ProgressBar, progress_bar
from worker.replay import (
    InvalidBound,
    ReplayInterrupted,
    estimate_total,
    id_after,
    parse_bound,
    replay,
    run_replay,
)
from worker.settings import Settings
from worker.store import JobStore, MongoJobStore, StoreUnavailable

STREAM = "florist:events"
GROUP = "florist-worker"
DEAD = "florist:events:dead"
JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stream": STREAM,
        "group": GROUP,
        "dead_stream": DEAD,
        "consumer": "replay-test",
        "backoff_initial_s": 0.001,
        "backoff_max_s": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


def publish(
    client: redis.Redis, entries: list[dict[str, str]], ids: list[str] | None = None
) -> list[str]:
    published = []
    for index, fields in enumerate(entries):
        entry_id: Any = client.xadd(STREAM, dict[Any, Any](fields), id=ids[index] if ids else "*")
        published.append(entry_id.decode())
    return published


def timed_ids(count: int) -> list[str]:
    """One entry per second from BASE_MS: easy to address by time."""
    return [f"{BASE_MS + 1000 * index}-0" for index in range(count)]


def document(database: Database[Any], job_id: str = JOB) -> dict[str, Any]:
    found: dict[str, Any] | None = database["job"].find_one({"_id": job_id})
    assert found is not None
    return found


def fresh_database(job_document: dict[str, Any]) -> Database[Any]:
    database: Database[Any] = mongomock_ng.MongoClient()["florist-replay"]
    database["job"].insert_one(copy.deepcopy(job_document))
    return database


class RecordingStore(JobStore):
    """The real store, remembering the position of every event it was asked to apply."""

    def __init__(self, database: Database[Any], fail_from: int | None = None) -> None:
        self.inner = MongoJobStore(database)
        self.positions: list[StreamPosition] = []
        self.fail_from = fail_from
        self.failures = 0

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        if self.fail_from is not None and len(self.positions) >= self.fail_from:
            self.failures += 1
            raise StoreUnavailable("connection refused")
        self.positions.append(position)
        return self.inner.apply(event, position, dry_run=dry_run)

    def ping(self) -> None:
        self.inner.ping()


@pytest.fixture(autouse=True)
def own_logging() -> Iterator[None]:
    """Log to this test's stderr, then put back the previous structlog configuration: a
    command configures logging for the process, and a test that ran a command before
    may have left it pointing at its own captured, now closed, stderr."""
    saved = structlog.get_config()
    configure_logging("info", "console")
    yield
    structlog.configure(**saved)


# --- bounds --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        ("-", "-"),
        ("+", "+"),
        ("1700000000000-0", "1700000000000-0"),
        ("1700000000000-10", "1700000000000-10"),
        ("1700000000000", "1700000000000"),
        ("2023-11-14T22:13:20Z", "1700000000000"),
        ("2023-11-14T23:13:20.250+01:00", "1700000000250"),
        ("2023-11-14T22:13:20.100", "1700000000100"),  # naive: UTC
        ("2023-11-14 22:13:20", "1700000000000"),
        ("2023-11-14", "1699920000000"),
        (" 1700000000000-3 ", "1700000000000-3"),
    ],
)
def test_bounds_accept_ids_milliseconds_and_iso_times(text: str, bound: str) -> None:
    assert parse_bound(text) == bound


@pytest.mark.parametrize(
    "text", ["yesterday", "1-2-3", "1969-12-31T00:00:00Z", "", "18446744073709551616", "5-x"]
)
def test_bad_bounds_are_refused_with_the_text(text: str) -> None:
    with pytest.raises(InvalidBound) as raised:
        parse_bound(text)
    assert repr(text.strip()) in str(raised.value) or "stream entry ID" in str(raised.value)


def test_id_after_is_the_next_id_as_integers() -> None:
    assert id_after("5-9") == "5-10"
    assert id_after(f"5-{2**64 - 1}") == "6-0"


# --- replay against a real Redis -------------------------------------------------------


@pytest.mark.parametrize("copied_after", [1, 17, 37])
def test_a_restored_copy_replayed_from_its_position_ends_as_without_the_failure(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
    copied_after: int,
) -> None:
    database["job"].insert_one(job_document)
    worker = Worker(real_redis, database, settings())
    first = publish(real_redis, sample_entries[:copied_after])
    worker.drain()
    backup, backup_position = document(database), first[-1]
    publish(real_redis, sample_entries[copied_after:])
    worker.drain()
    without_failure = document(database)
    assert without_failure != backup

    database["job"].replace_one({"_id": JOB}, backup)  # MongoDB restored from the copy
    counts = replay(real_redis, database, start=backup_position, settings=settings())

    assert document(database) == without_failure
    assert counts == {"duplicate": 1, "applied": 38 - copied_after}
    Job(**document(database))
    # Replaying the same range again changes nothing: every entry is a duplicate, but
    # for the IN_PROGRESS status (entry 0), which cannot undo the job's finish.
    again = replay(real_redis, database, start=backup_position, settings=settings())
    expected = {"duplicate": 38 - copied_after + 1}
    if copied_after == 1:
        expected = {"duplicate": 37, "rejected_transition": 1}
    assert again == expected
    assert document(database) == without_failure


def test_replay_from_the_start_over_a_fresh_job_gives_the_workers_document(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(copy.deepcopy(job_document))
    publish(real_redis, sample_entries)
    Worker(real_redis, database, settings()).drain()
    fresh = fresh_database(job_document)

    counts = replay(real_redis, fresh, settings=settings())

    assert counts == {"applied": 38}
    assert document(fresh) == document(database)
    assert document(fresh)["status"] == "FINISHED_SUCCESSFULLY"
    # Twice: nothing changes; the IN_PROGRESS event cannot undo the finish.
    assert replay(real_redis, fresh, settings=settings()) == {
        "duplicate": 37,
        "rejected_transition": 1,
    }
    assert document(fresh) == document(database)


def test_replay_leaves_the_consumer_group_untouched(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(job_document)
    publish(real_redis, sample_entries[:20])
    Worker(real_redis, database, settings()).drain()
    publish(real_redis, sample_entries[20:])
    # Another consumer holds some entries pending; the rest are not delivered yet.
    real_redis.xreadgroup(GROUP, "busy-consumer", {STREAM: ">"}, count=5)

    def group_state() -> tuple[Any, Any, Any]:
        pending = real_redis.xpending_range(STREAM, GROUP, "-", "+", 100)
        return (
            real_redis.xinfo_groups(STREAM),
            real_redis.xpending(STREAM, GROUP),
            [(row["message_id"], row["consumer"], row["times_delivered"]) for row in pending],
        )

    before = group_state()
    assert before[1]["pending"] == 5

    counts = replay(real_redis, database, settings=settings())

    assert sum(counts.values()) == 38
    assert group_state() == before
    assert real_redis.exists(DEAD) == 0


def test_a_dry_run_writes_nothing_and_counts_what_would_apply(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(job_document)
    publish(real_redis, sample_entries[:12])
    Worker(real_redis, database, settings()).drain()
    publish(real_redis, sample_entries[12:])
    before = document(database)

    predicted = replay(real_redis, database, dry_run=True, settings=settings())

    assert predicted == {"duplicate": 12, "applied": 26}
    assert document(database) == before
    assert replay(real_redis, database, settings=settings()) == predicted
    assert document(database) != before


def test_invalid_entries_are_counted_and_not_dead_lettered(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(job_document)
    publish(real_redis, sample_entries[:3])
    publish(
        real_redis,
        [
            {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": "{not json"},
            {"v": "2", "type": "server.metrics", "job_id": JOB, "metrics": "{}"},
            {"v": "1", "type": "job.status", "job_id": "no-such-job", "status": "IN_PROGRESS"},
        ],
    )

    counts = replay(real_redis, database, settings=settings())

    assert counts == {"applied": 3, "invalid": 1, "unsupported_version": 1, "unknown_job": 1}
    assert real_redis.exists(DEAD) == 0


def test_job_filter_replays_one_job_and_skips_the_others(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    other = copy.deepcopy(job_document)
    other["_id"] = "other-job"
    database["job"].insert_many([copy.deepcopy(job_document), copy.deepcopy(other)])
    for fields in sample_entries:
        publish(real_redis, [fields, {**fields, "job_id": "other-job"}])

    report = run_replay(real_redis, MongoJobStore(database), settings(), job_id=JOB)

    assert dict(report.counts) == {"applied": 38}
    assert (report.read, report.skipped) == (76, 38)
    assert dict(report.applied_by_job) == {JOB: 38}
    assert document(database)["status"] == "FINISHED_SUCCESSFULLY"
    assert document(database, "other-job") == other


def _named_by_uuid(fields: dict[str, str], server_uuid: str) -> dict[str, str]:
    """An entry as StreamMetricsReporter publishes it: the job named by a uuid only."""
    named = {key: value for key, value in fields.items() if key != "job_id"}
    if "client_uuid" not in named:
        named["server_uuid"] = server_uuid
    return named


def test_job_filter_replays_the_entries_that_name_the_job_by_uuid(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    other = copy.deepcopy(job_document)
    other["_id"], other["server_uuid"] = "other-job", "other-server"
    for index, client in enumerate(other["clients_info"]):
        client["uuid"] = f"other-client-{index}"
    renamed = {
        client["uuid"]: f"other-client-{index}"
        for index, client in enumerate(job_document["clients_info"])
    }
    database["job"].insert_many([copy.deepcopy(job_document), copy.deepcopy(other)])
    expected = fresh_database(job_document)
    for fields in sample_entries:
        mine = _named_by_uuid(fields, job_document["server_uuid"])
        theirs = _named_by_uuid(fields, "other-server")
        if "client_uuid" in theirs:
            theirs["client_uuid"] = renamed[theirs["client_uuid"]]
        publish(real_redis, [mine, theirs])
    replay(real_redis, expected, settings=settings())  # the whole stream, this job's half

    report = run_replay(real_redis, MongoJobStore(database), settings(), job_id=JOB)

    assert dict(report.counts) == {"applied": 38}
    assert (report.read, report.skipped) == (76, 38)
    assert dict(report.applied_by_job) == {JOB: 38}
    assert document(database) == document(expected)
    assert document(database, "other-job") == other


def test_job_filter_skips_entries_whose_uuid_no_job_holds(
    real_redis: redis.Redis, database: Database[Any], job_document: dict[str, Any]
) -> None:
    database["job"].insert_one(copy.deepcopy(job_document))
    snapshot = {"v": "1", "type": "server.metrics", "metrics": "{}"}
    publish(real_redis, [{**snapshot, "server_uuid": "nobody"}, {"v": "1", "type": "x"}])

    report = run_replay(real_redis, MongoJobStore(database), settings(), job_id=JOB)

    assert (dict(report.counts), report.read, report.skipped) == ({}, 2, 2)
    assert document(database) == job_document


def test_pages_continue_after_the_last_id_compared_as_integers(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(job_document)
    ids = [f"{BASE_MS}-{sequence}" for sequence in range(38)]  # 5-9 < 5-10 < ... as integers
    publish(real_redis, sample_entries, ids)
    store = RecordingStore(database)
    seen: list[int] = []

    report = run_replay(real_redis, store, settings(), page_size=4, progress=seen.append)

    assert [str(position) for position in store.positions] == ids
    assert dict(report.counts) == {"applied": 38}
    assert seen == [*range(4, 38, 4), 38]
    assert report.last_id == ids[-1]


def test_bounds_by_id_and_by_time_select_an_inclusive_range(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(job_document)
    ids = timed_ids(38)
    publish(real_redis, sample_entries, ids)

    by_id = RecordingStore(database)
    run_replay(real_redis, by_id, settings(), ids[5], ids[9], dry_run=True)
    by_time = RecordingStore(database)
    run_replay(real_redis, by_time, settings(), "2023-11-14T22:13:25", "2023-11-14T23:13:29+01:00")

    assert [str(p) for p in by_id.positions] == ids[5:10]
    assert [str(p) for p in by_time.positions] == ids[5:10]


def test_an_outage_shorter_than_the_timeout_is_waited_out(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database["job"].insert_one(job_document)
    publish(real_redis, sample_entries)
    store = RecordingStore(database, fail_from=10)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            store.fail_from = None  # MongoDB is back

    report = run_replay(real_redis, store, settings(), outage_timeout_s=3600, sleep=sleep)

    assert dict(report.counts) == {"applied": 38}
    assert len(waits) == store.failures == 3
    assert all(0 < wait <= 0.01 for wait in waits)


def test_a_long_mongodb_outage_stops_with_the_id_to_resume_from(
    real_redis: redis.Redis,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    """A page is decided whole (one batch, or one by one by a store without batches), so
    an outage part-way resumes from the page's first ID: what was applied before it
    comes back as duplicates, and the document is the same."""
    database["job"].insert_one(copy.deepcopy(job_document))
    ids = publish(real_redis, sample_entries)
    expected = fresh_database(job_document)
    replay(real_redis, expected, settings=settings())

    with pytest.raises(ReplayInterrupted, match=f"resume with --from {ids[0]}") as raised:
        run_replay(
            real_redis, RecordingStore(database, fail_from=10), settings(), outage_timeout_s=0
        )
    assert raised.value.resume_from == ids[0]
    assert dict(raised.value.report.counts) == {}

    counts = replay(real_redis, database, start=raised.value.resume_from, settings=settings())
    assert counts == {"duplicate": 10, "applied": 28}
    assert document(database) == document(expected)


def test_a_long_redis_outage_stops_with_the_id_after_the_last_one_replayed(
    private_redis: RedisServer,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1)
    try:
        database["job"].insert_one(job_document)
        ids = publish(client, sample_entries)
        store = RecordingStore(database)
        original_apply = store.apply

        def apply_then_stop_redis(event: Event, position: StreamPosition, **kw: Any) -> Outcome:
            outcome = original_apply(event, position, **kw)
            if len(store.positions) == 10:
                private_redis.stop()
            return outcome

        store.apply = apply_then_stop_redis  # type: ignore[method-assign]
        with pytest.raises(ReplayInterrupted, match="Redis unavailable") as raised:
            run_replay(client, store, settings(), page_size=5, outage_timeout_s=0)
        assert raised.value.resume_from == id_after(ids[9])

        private_redis.start()  # appendonly: the stream is still there
        counts = replay(client, database, start=raised.value.resume_from, settings=settings())
        assert counts == {"applied": 28}
        assert document(database)["status"] == "FINISHED_SUCCESSFULLY"
    finally:
        client.close()


# --- progress ----------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_share_rate_and_eta() -> None:
    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar(100, label="replay", stream=out, clock=lambda: now[0])
    now[0] = 101.0
    bar.update(50)

    line = out.getvalue()
    assert line.startswith("\rreplay  [")
    assert "50%" in line and "50/100" in line and "50/s" in line and "ETA 0:00:01" in line

    now[0] = 102.0
    bar.update(100)
    bar.close()
    final = out.getvalue().rsplit("\r", 1)[1]
    assert "100%" in final and "in 0:00:02" in final and final.endswith("\n")


def test_progress_bar_with_a_low_estimate_never_claims_to_be_done_early() -> None:
    bar = ProgressBar(10, stream=io.StringIO(), clock=lambda: 5.0)
    bar.done = 20
    line = bar.render(6.0)
    assert "99%" in line and "20/20" in line


def test_progress_bar_only_on_a_terminal() -> None:
    assert progress_bar(10, stream=io.StringIO()) is None
    assert isinstance(progress_bar(10, stream=Terminal()), ProgressBar)


def test_total_is_xlen_for_everything_and_scaled_by_time_for_a_range(
    real_redis: redis.Redis, sample_entries: list[dict[str, str]]
) -> None:
    assert estimate_total(real_redis, STREAM, "-", "+") == 0
    ids = timed_ids(38)
    publish(real_redis, sample_entries, ids)
    assert estimate_total(real_redis, STREAM, "-", "+") == 38
    # Entries 5..9 cover 4 s of a 37 s stream of 38 entries.
    assert estimate_total(real_redis, STREAM, ids[5], ids[9]) == round(38 * 4 / 37)
    assert estimate_total(real_redis, STREAM, f"{BASE_MS + 10**6}", "+") == 0


# --- command line --------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """``florist-worker replay ...`` through the real entry point."""
    return main(["replay", *argv])


def test_cli_replays_and_prints_one_line_per_outcome(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database["job"].insert_one(job_document)
    ids = publish(real_redis, sample_entries)
    monkeypatch.setattr(replay_command, "connect_database", lambda _settings: database)

    code = run_cli(["--redis-url", redis_url, "--from", ids[30], "--job", JOB])

    out = capsys.readouterr().out
    assert code == 0
    assert "read 8 entries" in out
    assert "  applied" in out and out.split("applied")[1].split()[0] == "8"
    assert "changed 1 job(s) with 8 event(s)" in out
    assert document(database)["status"] == "FINISHED_SUCCESSFULLY"


def test_cli_dry_run_says_so_and_writes_nothing(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database["job"].insert_one(job_document)
    publish(real_redis, sample_entries)
    monkeypatch.setattr(replay_command, "connect_database", lambda _settings: database)

    code = run_cli(["--redis-url", redis_url, "--dry-run", "--page-size", "7"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("dry run: read 38 entries")
    assert "would change 1 job(s) with 38 event(s)" in out
    assert "nothing was written" in out
    assert document(database) == job_document


def test_cli_with_the_in_memory_database_finds_no_jobs(
    real_redis: redis.Redis,
    redis_url: str,
    sample_entries: list[dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(real_redis, sample_entries[:5])

    code = run_cli(["--redis-url", redis_url, "--mongodb-uri", "memory://", "--no-progress"])

    assert code == 0
    out = capsys.readouterr().out
    assert out.split("unknown_job")[1].split()[0] == "5"


def test_cli_refuses_a_bad_bound(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["--redis-url", redis_url, "--to", "next tuesday"])
    assert code == 2
    assert "next tuesday" in capsys.readouterr().err


def test_cli_mongodb_down_exits_1_naming_where_to_resume(
    real_redis: redis.Redis,
    redis_url: str,
    sample_entries: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = publish(real_redis, sample_entries[:3])
    nowhere: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=50, connect=False
    )
    monkeypatch.setattr(replay_command, "connect_database", lambda _settings: nowhere["x"])
    try:
        code = run_cli(["--redis-url", redis_url, "--outage-timeout", "0"])
    finally:
        nowhere.close()

    assert code == 1
    err = capsys.readouterr().err
    assert "MongoDB unavailable" in err
    assert f"resume with --from {ids[0]}" in err


def _console(*argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    began = time.monotonic()
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("florist-worker")), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )
    return completed, time.monotonic() - began


def test_replay_against_an_unreachable_redis_fails_as_fast_as_stats() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    replayed, replay_s = _console("replay", "--redis-url", closed, "--mongodb-uri", "memory://")
    stats, stats_s = _console("stats", "--redis-url", closed)

    assert replayed.returncode == stats.returncode == 1
    last = replayed.stderr.splitlines()[-1]
    assert last.startswith(f"florist-worker replay: error: Redis {closed} did not answer: "), (
        replayed.stderr
    )
    assert "resume with" not in last  # nothing was replayed: there is nothing to resume
    # Not the 60 s of --outage-timeout: the same client failing the same way as stats.
    assert replay_s < stats_s + 5, (replay_s, stats_s)
