"""``florist-worker run`` says in its logs whether Redis and MongoDB answer: at start, when
an outage begins (again every minute while it lasts) and when it ends, even while no
event arrives; its start-up line holds JSON values only."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from tests.redis_server import free_port
from worker.commands.run import ServiceWatch
from worker.store import StoreUnavailable

CLI = Path(sys.executable).with_name("florist-worker")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Service:
    """A check that passes while ``up``."""

    def __init__(self, up: bool) -> None:
        self.up = up

    def __call__(self) -> None:
        if not self.up:
            raise StoreUnavailable("ServerSelectionTimeoutError: connection refused")


def events(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["log_level"], entry["event"]) for entry in logs]


def watch_of(redis_up: Service, mongodb_up: Service, clock: Clock) -> ServiceWatch:
    return ServiceWatch(
        {"redis": ("redis://r:6379/0", redis_up), "mongodb": ("mongodb://m:27017", mongodb_up)},
        interval_s=10,
        remind_s=60,
        clock=clock,
    )


def test_the_first_check_logs_each_service_either_way() -> None:
    watch = watch_of(Service(True), Service(False), Clock())
    with capture_logs() as logs:
        assert watch.check_once() == {"redis": True, "mongodb": False}
    assert events(logs) == [
        ("info", "redis reachable"),
        ("error", "mongodb unreachable, retrying"),
    ]
    assert logs[1]["address"] == "mongodb://m:27017"
    assert "connection refused" in logs[1]["error"]


def test_an_outage_is_logged_when_it_begins_every_minute_and_when_it_ends() -> None:
    clock, mongodb = Clock(), Service(True)
    watch = watch_of(Service(True), mongodb, clock)
    with capture_logs() as logs:
        watch.check_once()  # both reachable: said once
        clock.now += 10
        watch.check_once()  # nothing changed: nothing said
    assert events(logs) == [("info", "redis reachable"), ("info", "mongodb reachable")]

    mongodb.up = False
    with capture_logs() as logs:
        for _ in range(7):  # 0, 10, ..., 60 s into the outage
            watch.check_once()
            clock.now += 10
    assert events(logs) == [
        ("error", "mongodb unreachable, retrying"),
        ("error", "mongodb still unreachable, retrying"),
    ]
    assert logs[1]["down_s"] == 60.0

    mongodb.up = True
    with capture_logs() as logs:
        watch.check_once()
        clock.now += 10
        watch.check_once()
    assert events(logs) == [("warning", "mongodb reachable again")]
    assert logs[0]["down_s"] == 70.0


def test_the_watch_runs_in_its_own_thread_until_stopped() -> None:
    seen: queue.Queue[str] = queue.Queue()

    def check(name: str) -> Callable[[], None]:
        return lambda: seen.put(name)

    watch = ServiceWatch({"redis": ("r", check("redis"))}, interval_s=0.01)
    watch.start()
    try:
        assert seen.get(timeout=5) == "redis"
        assert seen.get(timeout=5) == "redis"  # checked again after the interval
    finally:
        watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()


# -- the real command -------------------------------------------------------------------------


class Lines:
    """A process's stderr lines, read in a thread so that waiting can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(
            target=lambda: [self.lines.put(line) for line in stream], daemon=True
        ).start()

    def wait_for(self, text: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            record = json.loads(line)
            if record["event"] == text:
                return dict(record)
        raise AssertionError(f"no {text!r} within {timeout_s} s; got:\n{''.join(self.seen)}")


@pytest.mark.redis_server
def test_an_idle_worker_logs_that_mongodb_is_unreachable(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    environment |= {
        "FLORIST_REDIS_URL": redis_url,
        "FLORIST_MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/",  # nothing listens
        "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "FLORIST_HEARTBEAT_INTERVAL_S": "1",
        "FLORIST_LOG_FORMAT": "json",
        "FLORIST_STREM": "typo",
    }
    process = subprocess.Popen(
        [str(CLI), "run"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        lines = Lines(process)
        warning = lines.wait_for(
            "ignoring unknown environment variable FLORIST_STREM (did you mean FLORIST_STREAM?)",
            30,
        )
        assert warning["level"] == "warning"
        starting = lines.wait_for("worker starting", 30)
        assert starting["heartbeat_file"] == str(tmp_path / "heartbeat")  # a path as text
        assert starting["log_format"] == "json"
        assert lines.wait_for("redis reachable", 30)["address"] == redis_url
        down = lines.wait_for("mongodb unreachable, retrying", 30)
        assert down["level"] == "error"
        assert "127.0.0.1" in down["address"]
        assert down["error"].endswith("Connection refused")  # one sentence, no topology
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "PosixPath" not in "".join(lines.seen)
    assert "Traceback" not in "".join(lines.seen)
