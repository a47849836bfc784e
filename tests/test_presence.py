"""One live worker per consumer name: ``florist-worker run`` refuses a name a live worker
holds (one line, exit 1); a clean stop frees it at once, a ``kill -9`` after the TTL
(``heartbeat_ttl_s``). The presence key itself: renewed while held, taken again when lost,
released only by its holder, in the stream's hash slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.redis_server import free_port
from tests.support import wait_until
from worker.cluster import slot
from worker.presence import ConsumerTaken, Presence, presence_key
from worker.settings import Settings

CLI = Path(sys.executable).with_name("florist-worker")
NAME = "shared-name"

pytestmark = pytest.mark.redis_server


class RunningWorker:
    """``florist-worker run`` in a process of its own, its stderr read in a thread."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(CLI), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None
        stream = self.process.stderr
        self._reader = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._reader.start()

    def logged(self, event: str) -> bool:
        return any(_event(line) == event for line in list(self.lines))

    def wait_started(self) -> None:
        wait_until(
            lambda: self.logged("worker starting") or self.process.poll() is not None,
            30,
            "the worker to start",
        )
        assert self.process.poll() is None, self.output()

    def exit_code(self, timeout_s: float = 30) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.exit_code()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _event(line: str) -> str | None:
    try:
        return str(json.loads(line).get("event"))
    except (json.JSONDecodeError, AttributeError):
        return None


@pytest.fixture
def environment(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """A worker's environment on the session's private Redis, with a stream of this
    test's own and a short TTL (2 s)."""
    values = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    return values | {
        "FLORIST_REDIS_URL": redis_url,
        # No MongoDB answers: the worker waits for it (and logs nothing before its claim).
        "FLORIST_MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/",
        "FLORIST_STREAM": f"presence-{uuid.uuid4().hex[:8]}:events",
        "FLORIST_CONSUMER": NAME,
        "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "FLORIST_HEARTBEAT_INTERVAL_S": "0.5",
        "FLORIST_HEARTBEAT_TTL_S": "2",
        "FLORIST_LOG_FORMAT": "json",
    }


def _key(environment: dict[str, str]) -> str:
    return presence_key(environment["FLORIST_STREAM"], "florist-worker", NAME)


def test_a_name_a_live_worker_holds_is_refused_and_free_at_once_after_a_clean_stop(
    environment: dict[str, str], redis_url: str
) -> None:
    first = RunningWorker(environment)
    others: list[RunningWorker] = []
    try:
        first.wait_started()
        second = RunningWorker(environment)
        others.append(second)
        assert second.exit_code() == 1
        lines = second.output().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"florist-worker run: error: consumer name '{NAME}' (FLORIST_CONSUMER) is held by "
            "a live worker ("
        ), lines
        assert "frees its name within heartbeat_ttl_s (2 s)" in lines[0]
        assert not second.logged("worker starting")

        assert first.stop() == 0
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.exists(_key(environment)) == 0  # released, not left to expire
        finally:
            client.close()
        third = RunningWorker(environment)
        others.append(third)
        third.wait_started()
        assert third.stop() == 0
    finally:
        for worker in [first, *others]:
            worker.kill()


def test_after_kill_9_the_name_is_free_once_the_ttl_has_passed(
    environment: dict[str, str], redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    first = RunningWorker(environment)
    others: list[RunningWorker] = []
    try:
        first.wait_started()
        first.kill()
        killed_at = time.monotonic()
        assert client.exists(_key(environment)) == 1  # nobody released it
        wait_until(lambda: client.exists(_key(environment)) == 0, 10, "the name to expire")
        freed_s = time.monotonic() - killed_at
        assert freed_s <= 2.0 + 1.0  # the TTL from the last renewal, and a loaded machine
        second = RunningWorker(environment)
        others.append(second)
        second.wait_started()
        assert second.stop() == 0
    finally:
        for worker in [first, *others]:
            worker.kill()
        client.close()


def test_a_worker_killed_moments_ago_still_holds_its_name(
    environment: dict[str, str], redis_url: str
) -> None:
    environment = environment | {"FLORIST_HEARTBEAT_TTL_S": "30"}
    first = RunningWorker(environment)
    others: list[RunningWorker] = []
    try:
        first.wait_started()
        first.kill()
        second = RunningWorker(environment)
        others.append(second)
        assert second.exit_code() == 1
        assert "within heartbeat_ttl_s (30 s)" in second.output()
    finally:
        for worker in [first, *others]:
            worker.kill()
        client = redis.Redis.from_url(redis_url)
        client.delete(_key(environment))
        client.close()


# -- the presence key -------------------------------------------------------------------------


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stream": f"presence-{uuid.uuid4().hex[:8]}:events",
        "consumer": NAME,
        "heartbeat_interval_s": 0.05,
        "heartbeat_ttl_s": 5,
    }
    return Settings(**(values | overrides))


def test_the_key_is_in_the_stream_s_hash_slot() -> None:
    key = presence_key("{florist}:events", "florist-worker", "host-1-a1b2c3")
    assert key == "{florist}:events:consumer:florist-worker:host-1-a1b2c3"
    assert slot(key) == slot("{florist}:events")


def test_a_claim_fails_while_another_holds_the_name_and_succeeds_after_release(
    real_redis: redis.Redis,
) -> None:
    settings = _settings()
    first, second = Presence(real_redis, settings), Presence(real_redis, settings)
    first.claim()
    with pytest.raises(ConsumerTaken, match=first.holder):
        second.claim()
    second.release()  # not the holder: the key stays
    assert real_redis.get(first.key) == first.holder.encode()
    first.release()
    assert real_redis.exists(first.key) == 0
    second.claim()
    assert real_redis.get(second.key) == second.holder.encode()


def test_renewals_keep_the_name_and_take_it_back_when_the_key_was_lost(
    real_redis: redis.Redis,
) -> None:
    settings = _settings()
    presence = Presence(real_redis, settings)
    presence.claim()
    lost = threading.Event()
    presence.start(on_lost=lost.set)
    try:
        real_redis.pexpire(presence.key, 100)  # renewals every 50 ms keep it alive
        time.sleep(0.3)
        assert real_redis.pttl(presence.key) > 1000
        real_redis.delete(presence.key)  # Redis lost its data (a restart, a failover)
        wait_until(lambda: real_redis.get(presence.key) == presence.holder.encode(), 5)
        assert not lost.is_set() and not presence.lost
    finally:
        presence.stop()
    assert real_redis.exists(presence.key) == 0


def test_a_worker_that_finds_another_holder_stops_and_leaves_its_key(
    real_redis: redis.Redis,
) -> None:
    settings = _settings()
    presence = Presence(real_redis, settings)
    presence.claim()
    lost = threading.Event()
    presence.start(on_lost=lost.set)
    try:
        real_redis.set(presence.key, "another host pid 7 abcd")
        assert lost.wait(5)
        assert presence.lost
    finally:
        presence.stop()
    assert real_redis.get(presence.key) == b"another host pid 7 abcd"
