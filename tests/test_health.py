"""``florist-worker healthcheck`` against a real running Worker and hand-written heartbeats."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo.database import Database

from tests.redis_server import RedisServer
from worker.commands import healthcheck
from worker.consumer import Worker
from worker.entities import JOB_COLLECTION
from worker.events import Event
from worker.health import write_heartbeat
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.settings import Settings
from worker.store import MongoJobStore

CLI = Path(sys.executable).with_name("florist-worker")
WAIT_S = 20.0  # a generous deadline for polling, never a fixed sleep


def check(heartbeat_file: Path, *flags: str) -> int:
    """Run the healthcheck command's handler as the CLI would."""
    parser = argparse.ArgumentParser()
    healthcheck.register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["healthcheck", "--heartbeat-file", str(heartbeat_file), *flags])
    code: int = arguments.handler(arguments)
    return code


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def worker_settings(redis_url: str, heartbeat_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "consumer": "health-test",
        "heartbeat_file": heartbeat_file,
        "heartbeat_interval_s": 0.1,
        "block_ms": 100,
        "socket_timeout_s": 1.0,
        "backoff_max_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, name="worker-under-test", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(timeout=WAIT_S)


# -- hand-written heartbeats --------------------------------------------------------------


def test_unhealthy_without_a_heartbeat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(tmp_path / "none.heartbeat") == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "no heartbeat" in out


def test_healthy_with_a_fresh_heartbeat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hb"
    write_heartbeat(path, "c-1", redis_ok=True, mongodb_ok=True)

    assert check(path) == 0
    assert capsys.readouterr().out.startswith("healthy: c-1")


def age_heartbeat(path: Path, seconds: float) -> None:
    beat = json.loads(path.read_text())
    beat["at"] = time.time() - seconds
    path.write_text(json.dumps(beat))


def test_unhealthy_when_the_heartbeat_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hb"
    write_heartbeat(path, "c-1", redis_ok=True, mongodb_ok=True)
    age_heartbeat(path, 120)

    assert check(path) == 1
    assert "120 s old (limit 45 s)" in capsys.readouterr().out
    # the TTL flag is honoured: the same beat is fresh enough under a longer limit
    assert check(path, "--heartbeat-ttl-s", "300") == 0


def test_ttl_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hb"
    write_heartbeat(path, "c-1", redis_ok=True, mongodb_ok=True)
    age_heartbeat(path, 20)
    monkeypatch.setenv("FLORIST_HEARTBEAT_TTL_S", "10")

    assert check(path) == 1
    assert "limit 10 s" in capsys.readouterr().out


def test_unhealthy_when_redis_did_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hb"
    write_heartbeat(path, "c-1", redis_ok=False, mongodb_ok=True)

    assert check(path) == 1
    assert "Redis did not answer" in capsys.readouterr().out


def test_unhealthy_when_mongodb_did_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hb"
    write_heartbeat(path, "c-1", redis_ok=True, mongodb_ok=False)

    assert check(path) == 1
    assert "MongoDB did not answer" in capsys.readouterr().out


def test_unhealthy_when_the_heartbeat_is_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hb"
    path.write_text("{not json")

    assert check(path) == 1
    assert "unreadable heartbeat" in capsys.readouterr().out


# -- a real worker ------------------------------------------------------------------------


def test_healthy_while_a_worker_runs_and_unhealthy_after_it_stops(
    real_redis: redis.Redis, redis_url: str, database: Database[Any], tmp_path: Path
) -> None:
    path = tmp_path / "worker.heartbeat"
    assert check(path) == 1  # no worker yet

    worker = Worker(real_redis, database, worker_settings(redis_url, path))
    with running(worker) as thread:
        wait_for(path.exists, "the worker wrote its heartbeat")
        assert check(path) == 0
        first = json.loads(path.read_text())["at"]
        wait_for(lambda: json.loads(path.read_text())["at"] > first, "the heartbeat refreshed")
        assert check(path, "--heartbeat-ttl-s", "5") == 0

    assert not thread.is_alive()
    assert not path.exists()
    assert check(path) == 1


class BlockingStore(MongoJobStore):
    """A store whose apply hangs until released: a stuck consume loop."""

    def __init__(self, database: Database[Any]) -> None:
        super().__init__(database)
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        self.entered.set()
        self.release.wait(WAIT_S)
        return super().apply(event, position, dry_run=dry_run)


def test_a_hung_loop_turns_unhealthy_once_the_ttl_passes(
    real_redis: redis.Redis,
    redis_url: str,
    database: Database[Any],
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.heartbeat"
    database[JOB_COLLECTION].insert_one(job_document)
    store = BlockingStore(database)
    worker = Worker(real_redis, None, worker_settings(redis_url, path), store=store)
    with running(worker):
        wait_for(path.exists, "the worker wrote its heartbeat")
        assert check(path, "--heartbeat-ttl-s", "0.5") == 0
        real_redis.xadd(worker.settings.stream, dict[Any, Any](sample_entries[0]))
        assert store.entered.wait(WAIT_S)

        wait_for(lambda: check(path, "--heartbeat-ttl-s", "0.5") == 1, "the heartbeat went stale")

        store.release.set()
        wait_for(lambda: check(path, "--heartbeat-ttl-s", "0.5") == 0, "the loop beat again")


def test_a_redis_outage_turns_unhealthy(
    private_redis: RedisServer,
    database: Database[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "worker.heartbeat"
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    worker = Worker(client, database, worker_settings(private_redis.url, path))
    with running(worker):
        wait_for(path.exists, "the worker wrote its heartbeat")
        assert check(path, "--heartbeat-ttl-s", "2") == 0
        private_redis.stop()

        wait_for(lambda: check(path, "--heartbeat-ttl-s", "2") == 1, "the outage showed")
        capsys.readouterr()
        assert check(path, "--heartbeat-ttl-s", "2") == 1
        reason = capsys.readouterr().out
        assert "Redis did not answer" in reason

        private_redis.start()
        wait_for(lambda: check(path, "--heartbeat-ttl-s", "2") == 0, "healthy again")
    client.close()


# -- the real command line ----------------------------------------------------------------


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "healthcheck", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exit_codes(tmp_path: Path) -> None:
    assert CLI.exists(), f"florist-worker is not installed next to {sys.executable}"
    path = tmp_path / "hb"

    missing = run_cli("--heartbeat-file", str(path))
    assert missing.returncode == 1, missing.stderr
    assert "no heartbeat" in missing.stdout

    write_heartbeat(path, "c-1", redis_ok=True, mongodb_ok=True)
    fresh = run_cli("--heartbeat-file", str(path))
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.startswith("healthy")

    age_heartbeat(path, 100)
    stale = run_cli("--heartbeat-file", str(path), "--heartbeat-ttl-s", "30")
    assert stale.returncode == 1, stale.stderr
    assert "old" in stale.stdout
