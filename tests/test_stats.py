"""collect_stats against a real Redis, its rendering, and ``florist-worker stats``."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest
import redis
from pymongo.database import Database

from tests.redis_server import free_port
from worker.commands import stats as stats_command
from worker.consumer import Worker
from worker.entities import JOB_COLLECTION
from worker.settings import Settings
from worker.stats import EntryMark, collect_stats, count_dead_reasons, render_stats

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


def test_unknown_lag_is_none_not_zero(real_redis: redis.Redis, redis_url: str) -> None:
    # Redis 7 cannot compute the lag once an undelivered entry was deleted.
    ids = publish(real_redis, [{"n": str(n)} for n in range(4)])
    real_redis.xgroup_create(STREAM, GROUP, id="0")
    real_redis.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=1)
    real_redis.xdel(STREAM, ids[2])

    stats = collect_stats(real_redis, settings_for(redis_url))

    assert stats.lag is None
    assert f"group {GROUP}: lag unknown" in render_stats(stats)


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

    assert code == 0
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
    assert code == 0
    assert stats_command.CLEAR_SCREEN not in text
    assert text.count(f"stream {STREAM}: missing") == 2
    assert "\n\n" in text


def test_watch_keeps_going_when_redis_fails(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    out = io.StringIO()
    sleep = Interrupts(after=2)

    code = stats_command.watch(client, settings_for(url), 1, as_json=True, out=out, sleep=sleep)

    assert code == 0
    assert len(sleep.calls) == 2
    assert out.getvalue() == ""
    assert capsys.readouterr().err.count("did not answer") == 2
