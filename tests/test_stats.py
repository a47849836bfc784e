"""collect_stats against a real Redis, its rendering, and ``florist-worker stats``."""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import pytest
import redis
from pymongo.database import Database

from tests.redis_server import free_port
from worker import stats as stats_module
from worker.commands import stats as stats_command
from worker.consumer import Worker
from worker.entities import JOB_COLLECTION
from worker.errors import Misconfigured
from worker.producer import EventPublisher
from worker.settings import Settings
from worker.stats import (
    EntryMark,
    JobsStats,
    collect_jobs,
    collect_stats,
    count_dead_reasons,
    render_stats,
)

STREAM = "florist:events"
GROUP = "florist-worker"
DEAD = "florist:events:dead"


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": url, "consumer": "stats-test", "block_ms": 100}
    values.update(overrides)
    return Settings(**values)


def run_command(module: ModuleType, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(argv)
    code: int = arguments.handler(arguments)
    return code


@pytest.fixture(autouse=True)
def _no_configured_mongodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads jobs from FLORIST_MONGODB_URI: the in-memory one (empty) unless a
    test says otherwise, so no test waits for a MongoDB that is not there."""
    monkeypatch.setenv("FLORIST_MONGODB_URI", "memory://")


def publish(client: redis.Redis, entries: list[dict[str, str]]) -> list[str]:
    ids = []
    for fields in entries:
        entry_id: Any = client.xadd(STREAM, dict[Any, Any](fields))
        ids.append(entry_id.decode())
    return ids


# -- collect_stats ----------------------------------------------------------------------


def test_missing_stream_and_group_are_reported_as_zeros_and_none(
    real_redis: redis.Redis, redis_url: str
) -> None:
    stats = collect_stats(real_redis, settings_for(redis_url))

    assert stats.stream_exists is False and stats.group_exists is False
    assert (stats.length, stats.pending, stats.dead_letters) == (0, 0, 0)
    assert stats.first_entry is None and stats.last_entry is None
    assert stats.lag is None and stats.entries_read is None and stats.oldest_pending_id is None
    assert stats.consumers == ()
    assert stats.dead_letters_by_reason == {}
    text = render_stats(stats)
    assert f"stream {STREAM}: missing" in text
    assert f"group {GROUP}: missing" in text
    assert f"dead letters {DEAD}: 0" in text


def test_stream_without_group(real_redis: redis.Redis, redis_url: str) -> None:
    publish(real_redis, [{"n": "1"}, {"n": "2"}])

    stats = collect_stats(real_redis, settings_for(redis_url))

    assert stats.stream_exists is True and stats.length == 2
    assert stats.group_exists is False and stats.lag is None and stats.pending == 0


def test_replay_window_from_first_and_last_entry(real_redis: redis.Redis, redis_url: str) -> None:
    real_redis.xadd(STREAM, {"n": "1"}, id="1700000000000-0")
    real_redis.xadd(STREAM, {"n": "2"}, id="1700000000000-1")
    real_redis.xadd(STREAM, {"n": "3"}, id="1700003600000-7")

    stats = collect_stats(real_redis, settings_for(redis_url))

    assert stats.length == 3
    assert stats.entries_added == 3
    assert stats.first_entry == EntryMark(
        "1700000000000-0", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    )
    assert stats.last_entry == EntryMark(
        "1700003600000-7", datetime(2023, 11, 14, 23, 13, 20, tzinfo=UTC)
    )
    text = render_stats(stats)
    assert "first  1700000000000-0 (2023-11-14T22:13:20+00:00)" in text
    assert "replay window 1.0 h" in text


def test_group_lag_pending_and_consumers(real_redis: redis.Redis, redis_url: str) -> None:
    ids = publish(real_redis, [{"n": str(n)} for n in range(5)])
    real_redis.xgroup_create(STREAM, GROUP, id="0")
    real_redis.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=2)
    real_redis.xreadgroup(GROUP, "bob", {STREAM: ">"}, count=1)
    real_redis.xack(STREAM, GROUP, ids[1])

    stats = collect_stats(real_redis, settings_for(redis_url))

    assert stats.group_exists is True
    assert stats.lag == 2
    assert stats.entries_read == 3
    assert stats.last_delivered_id == ids[2]
    assert stats.pending == 2
    assert stats.oldest_pending_id == ids[0]
    assert stats.oldest_pending_consumer == "alice"
    assert stats.oldest_pending_deliveries == 1
    assert stats.oldest_pending_idle_ms is not None and stats.oldest_pending_idle_ms >= 0
    assert {(c.name, c.pending) for c in stats.consumers} == {("alice", 1), ("bob", 1)}
    text = render_stats(stats)
    assert f"group {GROUP}: lag 2, entries read 3" in text
    assert f"pending 2, oldest {ids[0]} idle" in text
    assert "consumer alice: pending 1" in text


def test_lag_is_counted_where_redis_cannot_tell(real_redis: redis.Redis, redis_url: str) -> None:
    # Redis 7 cannot compute the lag once an undelivered entry was deleted: counted, it is
    # the entries left after last-delivered-id, and no loss is claimed.
    ids = publish(real_redis, [{"n": str(n)} for n in range(4)])
    real_redis.xgroup_create(STREAM, GROUP, id="0")
    real_redis.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=1)
    real_redis.xdel(STREAM, ids[2])

    stats = collect_stats(real_redis, settings_for(redis_url))

    assert stats.lag == 2
    assert stats.health is not None
    assert stats.health.redis_lag is None and stats.health.gone_unread is None
    assert f"group {GROUP}: lag 2, entries read 1" in render_stats(stats)


def test_dead_letters_by_reason_across_pages(real_redis: redis.Redis, redis_url: str) -> None:
    for reason in ["invalid", "unknown_job", "invalid", "unsupported_version", "invalid"]:
        real_redis.xadd(DEAD, {"type": "job.status", "dead_reason": reason})
    real_redis.xadd(DEAD, {"type": "job.status"})  # written by hand, without a reason

    reasons = count_dead_reasons(real_redis, DEAD, page_size=2)
    stats = collect_stats(real_redis, settings_for(redis_url))

    expected = {"invalid": 3, "unknown": 1, "unknown_job": 1, "unsupported_version": 1}
    assert reasons == expected
    assert stats.dead_letters == 6
    assert stats.dead_letters_by_reason == expected
    assert f"dead letters {DEAD}: 6 (invalid 3, unknown 1, unknown_job 1" in render_stats(stats)


def test_dead_letter_count_without_scanning(real_redis: redis.Redis, redis_url: str) -> None:
    for _ in range(3):
        real_redis.xadd(DEAD, {"dead_reason": "invalid"})

    stats = collect_stats(real_redis, settings_for(redis_url), count_reasons=False)

    assert stats.dead_letters == 3
    assert stats.dead_letters_by_reason is None


def test_works_with_a_decoding_client(redis_url: str, real_redis: redis.Redis) -> None:
    publish(real_redis, [{"n": "1"}])
    real_redis.xgroup_create(STREAM, GROUP, id="0")
    real_redis.xreadgroup(GROUP, "alice", {STREAM: ">"})
    real_redis.xadd(DEAD, {"dead_reason": "invalid"})
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stats = collect_stats(decoding, settings_for(redis_url))
    finally:
        decoding.close()

    assert stats.consumers[0].name == "alice"
    assert stats.oldest_pending_consumer == "alice"
    assert stats.dead_letters_by_reason == {"invalid": 1}


def test_after_a_worker_drained_the_sample_run(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
) -> None:
    database[JOB_COLLECTION].insert_one(job_document)
    publish(real_redis, sample_entries)
    publish(real_redis, [{"v": "1", "type": "no.such.type", "job_id": "x"}])
    publish(
        real_redis, [{"v": "1", "type": "job.status", "job_id": "nope", "status": "IN_PROGRESS"}]
    )
    settings = settings_for(redis_url)

    Worker(real_redis, database, settings).drain()
    stats = collect_stats(real_redis, settings)

    assert stats.length == 40
    assert stats.lag == 0
    assert stats.entries_read == 40
    # the unknown job stays pending for a retry; the bad type was dead-lettered at once
    assert stats.pending == 1
    assert stats.oldest_pending_consumer == "stats-test"
    assert [(c.name, c.pending) for c in stats.consumers] == [("stats-test", 1)]
    assert stats.dead_letters_by_reason == {"invalid": 1}


def test_to_json_is_plain_json(real_redis: redis.Redis, redis_url: str) -> None:
    real_redis.xadd(STREAM, {"n": "1"}, id="1700000000000-0")
    real_redis.xgroup_create(STREAM, GROUP, id="0")
    real_redis.xreadgroup(GROUP, "alice", {STREAM: ">"})

    data = json.loads(collect_stats(real_redis, settings_for(redis_url)).to_json())

    assert data["first_entry"] == {"id": "1700000000000-0", "time": "2023-11-14T22:13:20.000+00:00"}
    assert data["consumers"][0]["name"] == "alice"
    assert data["pending"] == 1 and data["lag"] == 0
    assert datetime.fromisoformat(data["collected_at"]).tzinfo is not None


# -- the command ------------------------------------------------------------------------


def test_stats_command_prints_text(
    real_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(real_redis, [{"n": "1"}, {"n": "2"}])

    code = run_command(stats_command, ["stats", "--redis-url", redis_url])

    out = capsys.readouterr().out
    assert code == 0
    assert f"stream {STREAM}: 2 entries" in out
    assert f"group {GROUP}: missing" in out


def test_stats_command_json_with_flags(
    real_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    real_redis.xadd("other:stream", {"n": "1"})
    real_redis.xadd("other:dead", {"dead_reason": "invalid"})

    code = run_command(
        stats_command,
        [
            "stats",
            "--json",
            "--redis-url",
            redis_url,
            "--stream",
            "other:stream",
            "--dead-stream",
            "other:dead",
            "--group",
            "g2",
        ],
    )

    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (data["stream"], data["group"], data["dead_stream"]) == (
        "other:stream",
        "g2",
        "other:dead",
    )
    assert data["length"] == 1 and data["group_exists"] is False
    assert data["dead_letters_by_reason"] == {"invalid": 1}


def test_stats_command_on_a_missing_stream_exits_0(
    real_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command(stats_command, ["stats", "--json", "--redis-url", redis_url]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stream_exists"] is False and data["length"] == 0 and data["lag"] is None


def test_stats_command_without_redis_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    code = run_command(stats_command, ["stats", "--redis-url", url, "--socket-timeout-s", "3"])

    captured = capsys.readouterr()
    assert code == 1
    assert "did not answer" in captured.err and captured.out == ""


def test_watch_flag_default_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    stats_command.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["stats", "--watch"]).watch == stats_command.DEFAULT_WATCH_S
    assert parser.parse_args(["stats", "--watch", "0.5"]).watch == 0.5
    assert parser.parse_args(["stats"]).watch is None
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["stats", "--watch", "0"])
    assert refused.value.code == 2
    assert "above 0" in capsys.readouterr().err


class Interrupts:
    """A stand-in for time.sleep that presses Ctrl-C on its ``after``-th call."""

    def __init__(self, after: int, redis_client: redis.Redis | None = None) -> None:
        self.after = after
        self.calls: list[float] = []
        self.redis_client = redis_client

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.redis_client is not None:  # something changes between refreshes
            self.redis_client.xadd(STREAM, {"n": str(len(self.calls))})
        if len(self.calls) >= self.after:
            raise KeyboardInterrupt


def test_watch_json_refreshes_until_ctrl_c(real_redis: redis.Redis, redis_url: str) -> None:
    out = io.StringIO()
    sleep = Interrupts(after=3, redis_client=real_redis)

    code = stats_command.watch(
        real_redis, settings_for(redis_url), 1.5, as_json=True, out=out, sleep=sleep
    )

    assert code == 130  # Ctrl-C ends a watch
    assert sleep.calls == [1.5, 1.5, 1.5]
    lengths = [json.loads(line)["length"] for line in out.getvalue().splitlines()]
    assert lengths == [0, 1, 2]


def test_watch_text_blocks_are_separated_when_not_a_terminal(
    real_redis: redis.Redis, redis_url: str
) -> None:
    out = io.StringIO()

    code = stats_command.watch(
        real_redis, settings_for(redis_url), 2, as_json=False, out=out, sleep=Interrupts(after=2)
    )

    text = out.getvalue()
    assert code == 130  # Ctrl-C ends a watch
    assert stats_command.CLEAR_SCREEN not in text
    assert text.count(f"stream {STREAM}: missing") == 2
    assert "\n\n" in text


def test_watch_keeps_going_when_redis_fails(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    out = io.StringIO()
    sleep = Interrupts(after=2)

    code = stats_command.watch(client, settings_for(url), 1, as_json=True, out=out, sleep=sleep)

    assert code == 130  # Ctrl-C ends a watch
    assert len(sleep.calls) == 2
    assert out.getvalue() == ""
    assert capsys.readouterr().err.count("did not answer") == 2


# -- IN_PROGRESS jobs and the silence of their hosts (MongoDB) ---------------------------

LIMIT_S = 600.0


def redis_ms(client: redis.Redis) -> int:
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def liveness_job(
    job_id: str,
    server_ms: int | None,
    clients: dict[str, int | None],
    status: str = "IN_PROGRESS",
) -> dict[str, Any]:
    document: dict[str, Any] = {"_id": job_id, "status": status, "clients_info": []}
    if server_ms is not None:
        document["server_last_event_ms"] = server_ms
    for uuid, last in clients.items():
        member: dict[str, Any] = {"uuid": uuid}
        if last is not None:
            member["last_event_ms"] = last
        document["clients_info"].append(member)
    return document


def caught_up_group(client: redis.Redis) -> None:
    client.xadd(STREAM, {"n": "1"})
    client.xgroup_create(STREAM, GROUP, id="$")


def test_jobs_show_the_age_of_each_host_and_flag_near_and_over(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    caught_up_group(real_redis)
    now = redis_ms(real_redis)
    database[JOB_COLLECTION].insert_many(
        [
            liveness_job("fresh", now - 5_000, {"c-fresh": now - 1_000, "c-never": None}),
            liveness_job("near", now - 400_000, {"c-silent": now - 700_000}),
            liveness_job("over", now - 700_000, {}),
            liveness_job("unheard", None, {"c-1": now - 2_000}),
            liveness_job("done", now - 900_000, {}, status="FINISHED_SUCCESSFULLY"),
        ]
    )

    jobs = collect_jobs(real_redis, database, settings_for(redis_url, stale_after_s=LIMIT_S))

    assert jobs.available and jobs.error is None
    assert jobs.group_exists is True
    assert (jobs.stale_after_s, jobs.near_after_s) == (600.0, 300.0)
    assert jobs.horizon_ms is not None and jobs.horizon_ms >= now  # caught up: Redis's clock
    assert jobs.behind_s == 0
    assert (jobs.in_progress, jobs.near_limit, jobs.over_limit) == (4, 2, 1)
    assert jobs.without_server_event == 1
    # the most silent servers first; a job without a server event before the live ones
    assert [job.job_id for job in jobs.jobs] == ["over", "near", "unheard", "fresh"]
    by_id = {job.job_id: job for job in jobs.jobs}
    assert [by_id[i].state for i in ("over", "near", "unheard", "fresh")] == [
        "over",
        "near",
        "never",
        "ok",
    ]
    over = by_id["over"].server
    assert over.last_event_ms == now - 700_000
    assert over.age_s is not None and 700 <= over.age_s < 710
    assert over.last_event == datetime.fromtimestamp((now - 700_000) / 1000, UTC)
    fresh = by_id["fresh"]
    assert fresh.server.age_s is not None and 5 <= fresh.server.age_s < 15
    assert [(c.name, c.state) for c in fresh.clients] == [("c-fresh", "ok"), ("c-never", "never")]
    assert fresh.clients[1].age_s is None and fresh.clients[1].last_event_ms is None
    # a silent client is flagged, but it does not make the job's state: the server decides
    assert by_id["near"].clients[0].state == "over" and by_id["near"].state == "near"
    assert by_id["unheard"].server.age_s is None
    assert by_id["unheard"].clients[0].state == "ok"


def test_job_ages_are_measured_where_the_group_has_consumed_to(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    """A backlog holds the horizon back: a server whose last event was just before the
    oldest undelivered entry is not silent, however old that entry is."""
    now = redis_ms(real_redis)
    backlog_ms = now - 3_600_000  # workers were down for an hour
    real_redis.xadd(STREAM, {"n": "1"}, id=f"{backlog_ms - 20_000}-0")
    real_redis.xgroup_create(STREAM, GROUP, id="$")  # that one consumed
    real_redis.xadd(STREAM, {"n": "2"}, id=f"{backlog_ms}-0")  # then nothing read
    database[JOB_COLLECTION].insert_one(liveness_job("backlogged", backlog_ms - 10_000, {}))

    jobs = collect_jobs(real_redis, database, settings_for(redis_url, stale_after_s=LIMIT_S))

    assert jobs.horizon_ms == backlog_ms
    assert jobs.behind_s is not None and 3_600 <= jobs.behind_s < 3_610
    (job,) = jobs.jobs
    assert job.state == "ok" and job.server.age_s == 10.0
    text = "\n".join(stats_module.render_jobs(jobs))
    assert "as far as the group has consumed, 1.0 h behind Redis's clock" in text


def test_without_a_group_job_ages_are_against_redis_clock(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    now = redis_ms(real_redis)
    database[JOB_COLLECTION].insert_one(liveness_job("j", now - 20_000, {}))

    jobs = collect_jobs(real_redis, database, settings_for(redis_url, stale_after_s=30))

    assert jobs.group_exists is False
    assert jobs.horizon_ms is not None and jobs.horizon_ms >= now
    assert [job.state for job in jobs.jobs] == ["near"]
    assert "Redis's clock (no consumer group yet)" in "\n".join(stats_module.render_jobs(jobs))


def test_with_the_watchdog_off_jobs_show_ages_only(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    now = redis_ms(real_redis)
    database[JOB_COLLECTION].insert_one(liveness_job("j", now - 9_000_000, {"c": now}))

    jobs = collect_jobs(real_redis, database, settings_for(redis_url, stale_after_s=0))

    assert (jobs.near_limit, jobs.over_limit) == (0, 0)
    assert [job.state for job in jobs.jobs] == ["ok"]
    text = "\n".join(stats_module.render_jobs(jobs))
    assert "watchdog off (FLORIST_STALE_AFTER_S=0): ages only" in text
    assert "near the" not in text and "OVER" not in text


def test_liveness_written_by_the_worker_is_what_stats_reads(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
) -> None:
    job_id = job_document["_id"]
    database[JOB_COLLECTION].insert_one(job_document)
    publisher = EventPublisher(real_redis, STREAM)
    publisher.status(job_id, "IN_PROGRESS")
    publisher.publish_fields(
        {"v": "1", "type": "host.heartbeat", "host_type": "server", "job_id": job_id}
    )
    settings = settings_for(redis_url, stale_after_s=LIMIT_S)
    Worker(real_redis, database, settings).drain()

    jobs = collect_jobs(real_redis, database, settings)

    (job,) = jobs.jobs
    assert job.job_id == job_id and job.state == "ok"
    assert job.server.age_s is not None and job.server.age_s < 5
    assert [client.name for client in job.clients] == [
        client["uuid"] for client in job_document["clients_info"]
    ]
    assert {client.state for client in job.clients} == {"never"}


def test_rendered_jobs_name_each_host_and_flag_the_silent_ones(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    caught_up_group(real_redis)
    now = redis_ms(real_redis)
    database[JOB_COLLECTION].insert_many(
        [
            liveness_job("j-over", now - 720_000, {"c-a": now - 3_000, "c-b": None}),
            liveness_job("j-near", now - 330_000, {}),
            liveness_job("j-none", None, {}),
        ]
    )
    settings = settings_for(redis_url, stale_after_s=LIMIT_S)
    stats = collect_stats(real_redis, settings)
    text = render_stats(replace(stats, jobs=collect_jobs(real_redis, database, settings)))

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("IN_PROGRESS jobs in"))
    assert lines[start] == (
        "IN_PROGRESS jobs in memory:// (database florist-server): 3, "
        "2 near the silence limit, 1 over it"
    )
    assert lines[start + 1] == "  silence limit 600 s (FLORIST_STALE_AFTER_S), near from 300 s"
    assert lines[start + 2].startswith("  ages at ")
    assert lines[start + 3].startswith("  job j-over: server 12.0 min ago OVER the limit | ")
    assert "client c-a 3.0 s ago | client c-b never heard from" in lines[start + 3]
    assert lines[start + 4] == "  job j-near: server 5.5 min ago near the limit"
    assert lines[start + 5] == (
        "  job j-none: server no event yet (the watchdog times it from when it first sees the job)"
    )


def test_the_text_block_lists_a_bounded_number_of_jobs() -> None:
    jobs = JobsStats(
        database="memory:// (database d)",
        available=True,
        stale_after_s=10,
        near_after_s=5,
        in_progress=3,
        jobs=tuple(
            stats_module.JobSilence(
                f"j{n}", "ok", stats_module.HostSilence("server", 1, None, 1.0, "ok"), ()
            )
            for n in range(3)
        ),
    )
    lines = stats_module.render_jobs(jobs, shown=2)
    assert [line for line in lines if line.startswith("  job ")] == [
        "  job j0: server 1.0 s ago",
        "  job j1: server 1.0 s ago",
    ]
    assert lines[-1] == "  ... and 1 more (--json lists them all)"


def unreachable_database(uri: str | None = None) -> Any:
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri or f"mongodb://127.0.0.1:{free_port()}", connect=False
    )
    return client["florist-server"]


def test_an_unreachable_mongodb_is_reported_not_raised(
    real_redis: redis.Redis, redis_url: str
) -> None:
    port = free_port()
    uri = f"mongodb://reader:s3cret@127.0.0.1:{port}"
    database = unreachable_database(uri)
    started = time.monotonic()
    try:
        jobs = collect_jobs(
            real_redis, database, settings_for(redis_url, mongodb_uri=uri), timeout_s=0.3
        )
    finally:
        database.client.close()

    assert time.monotonic() - started < 5  # the timeout, not pymongo's 30 s default
    assert jobs.available is False and jobs.jobs == ()
    assert jobs.error is not None
    assert jobs.error.startswith(
        f"MongoDB at mongodb://reader:***@127.0.0.1:{port} (database florist-server) did not "
        "answer within 0.3 s (ServerSelectionTimeoutError: "
    )
    assert "s3cret" not in jobs.error
    assert "\n" not in jobs.error and "Topology" not in jobs.error


def quick_jobs(monkeypatch: pytest.MonkeyPatch, database: Any) -> None:
    """The command reads ``database`` with a short MongoDB timeout."""
    monkeypatch.setattr(stats_command, "connect_database", lambda settings: database)
    monkeypatch.setattr(
        stats_command, "collect_jobs", functools.partial(collect_jobs, timeout_s=0.3)
    )


def test_stats_command_without_mongodb_keeps_the_redis_part_and_exits_0(
    real_redis: redis.Redis,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish(real_redis, [{"n": "1"}])
    quick_jobs(monkeypatch, unreachable_database())

    code = run_command(stats_command, ["stats", "--redis-url", redis_url])

    captured = capsys.readouterr()
    assert code == 0
    assert f"stream {STREAM}: 1 entries" in captured.out
    assert f"dead letters {DEAD}: 0" in captured.out
    (line,) = [line for line in captured.out.splitlines() if "MongoDB" in line]
    assert line.startswith("IN_PROGRESS jobs not shown: MongoDB at ")
    assert "did not answer within 0.3 s" in line
    assert captured.err == ""


def test_stats_command_json_without_mongodb(
    real_redis: redis.Redis,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quick_jobs(monkeypatch, unreachable_database())

    code = run_command(stats_command, ["stats", "--json", "--redis-url", redis_url])

    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["stream_exists"] is False  # the Redis part, as before
    assert data["jobs"]["available"] is False
    assert "did not answer within 0.3 s" in data["jobs"]["error"]
    assert data["jobs"]["jobs"] == []


def test_stats_command_json_lists_the_jobs(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caught_up_group(real_redis)
    now = redis_ms(real_redis)
    database[JOB_COLLECTION].insert_one(liveness_job("j", now - 40_000, {"c": now - 1_000}))
    quick_jobs(monkeypatch, database)

    code = run_command(
        stats_command, ["stats", "--json", "--redis-url", redis_url, "--stale-after-s", "60"]
    )

    data = json.loads(capsys.readouterr().out)
    assert code == 0
    jobs = data["jobs"]
    assert jobs["available"] is True and jobs["error"] is None
    assert (jobs["stale_after_s"], jobs["near_after_s"]) == (60.0, 30.0)
    assert (jobs["in_progress"], jobs["near_limit"], jobs["over_limit"]) == (1, 1, 0)
    assert datetime.fromisoformat(jobs["horizon"]).tzinfo is not None
    (job,) = jobs["jobs"]
    assert job["job_id"] == "j" and job["state"] == "near"
    assert job["server"]["name"] == "server"
    assert job["server"]["last_event_ms"] == now - 40_000
    assert 40 <= job["server"]["age_s"] < 50
    assert datetime.fromisoformat(job["server"]["last_event"]).tzinfo is not None
    assert [(c["name"], c["state"]) for c in job["clients"]] == [("c", "ok")]


def test_stats_command_on_the_in_memory_database_shows_no_jobs(
    real_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_command(stats_command, ["stats", "--redis-url", redis_url])

    out = capsys.readouterr().out
    assert code == 0
    assert "IN_PROGRESS jobs in memory:// (database florist-server): 0" in out


def test_stats_command_when_no_mongodb_client_can_be_built(
    real_redis: redis.Redis,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(settings: Settings) -> Any:
        raise Misconfigured("FLORIST_MONGODB_URI=memory:// needs the in-memory database")

    monkeypatch.setattr(stats_command, "connect_database", refuse)

    code = run_command(stats_command, ["stats", "--redis-url", redis_url])

    out = capsys.readouterr().out
    assert code == 0
    assert f"stream {STREAM}: missing" in out
    assert out.rstrip().splitlines()[-1] == (
        "IN_PROGRESS jobs not shown: FLORIST_MONGODB_URI=memory:// needs the in-memory database"
    )


def test_watch_shows_the_jobs_at_every_refresh(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    now = redis_ms(real_redis)
    database[JOB_COLLECTION].insert_one(liveness_job("j", now, {}))
    out = io.StringIO()

    code = stats_command.watch(
        real_redis,
        settings_for(redis_url),
        1,
        as_json=True,
        out=out,
        sleep=Interrupts(after=2),
        database=database,
    )

    assert code == 130  # Ctrl-C ends a watch
    snapshots = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [[job["job_id"] for job in s["jobs"]["jobs"]] for s in snapshots] == [["j"], ["j"]]


def test_redis_only_callers_get_no_jobs(real_redis: redis.Redis, redis_url: str) -> None:
    stats = collect_stats(real_redis, settings_for(redis_url))
    assert stats.jobs is None and stats.to_dict()["jobs"] is None
    assert "IN_PROGRESS" not in render_stats(stats)


def test_a_redis_user_without_time_still_gets_the_redis_part(
    real_redis: redis.Redis, redis_url: str, database: Database[Any]
) -> None:
    real_redis.acl_setuser(
        "no-time",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        commands=["+@all", "-time"],
    )
    try:
        client = redis.Redis.from_url(redis_url, username="no-time", password="pw")
        jobs = collect_jobs(client, database, settings_for(redis_url))
        client.close()
    finally:
        real_redis.acl_deluser("no-time")

    assert jobs.available is False
    assert jobs.error is not None and jobs.error.startswith("Redis refused a command")
    assert "TIME" in jobs.error


# -- the real command: --watch on a terminal and in a pipe, ended by Ctrl-C ----------------


def _read_until(fd: int, count: int, text: bytes, timeout_s: float = 30) -> bytes:
    """What ``fd`` gives until ``text`` has appeared ``count`` times."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while seen.count(text) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            seen += os.read(fd, 65536)
    assert seen.count(text) >= count, seen
    return seen


def _watch(redis_url: str, stdout: int) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    environment |= {
        "FLORIST_REDIS_URL": redis_url,
        "FLORIST_STREAM": f"test:watch:{uuid4().hex}",
        "FLORIST_MONGODB_URI": "memory://",
    }
    command = [str(Path(sys.executable).with_name("florist-worker")), "stats", "--watch", "0.2"]
    return subprocess.Popen(
        command,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        env=environment,
        # Ctrl-C as on a terminal, even when these tests run as a background job (which
        # ignores SIGINT, and a child would inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.redis_server
def test_watch_redraws_on_a_terminal_and_ctrl_c_ends_it_with_130(redis_url: str) -> None:
    terminal, its_end = pty.openpty()
    process = _watch(redis_url, its_end)
    os.close(its_end)
    try:
        seen = _read_until(terminal, 2, b"dead letters")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
    snapshots = seen.split(stats_command.CLEAR_SCREEN.encode())
    assert snapshots[0] == b""  # every snapshot starts on a cleared screen
    assert all(snapshot.count(b"dead letters") == 1 for snapshot in snapshots[1:3])


@pytest.mark.redis_server
def test_watch_appends_in_a_pipe_and_ctrl_c_ends_it_with_130(redis_url: str) -> None:
    process = _watch(redis_url, subprocess.PIPE)
    assert process.stdout is not None
    try:
        seen = _read_until(process.stdout.fileno(), 2, b"dead letters")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert stats_command.CLEAR_SCREEN.encode() not in seen
    assert b"\n\n" in seen  # snapshots separated by a blank line
