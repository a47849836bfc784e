"""The reporter's heartbeats: a daemon thread per reporter that says "this host is alive"
when nothing else was published for an interval, and never gets in training's way."""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from florist_events import EventPublisher, InvalidEvent, StreamMetricsReporter, check_entry
from florist_events.wire import heartbeat_fields

STREAM = "florist:events"


def _entries(client: Any, stream: str = STREAM) -> list[dict[str, str]]:
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _id, fields in client.xrange(stream)
    ]


def _heartbeats(client: Any, stream: str = STREAM) -> list[dict[str, str]]:
    return [e for e in _entries(client, stream) if e["type"] == "host.heartbeat"]


def _wait(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_builders_and_the_checks() -> None:
    server = heartbeat_fields("server", server_uuid="s")
    assert check_entry(server)["host_type"] == "server"
    client = heartbeat_fields("client", client_uuid="c", job_id="j")
    assert check_entry(client)["client_uuid"] == "c"
    for call, why in [
        (lambda: heartbeat_fields("server"), "job_id' or 'server_uuid"),
        (lambda: heartbeat_fields("client", job_id="j"), "client_uuid"),
        (lambda: heartbeat_fields("worker", job_id="j"), "'server' or 'client'"),
    ]:
        with pytest.raises(InvalidEvent, match=why):
            call()
    with pytest.raises(InvalidEvent, match="host_type"):
        check_entry({"v": "1", "type": "host.heartbeat", "job_id": "j"})


def test_a_quiet_server_sends_heartbeats_and_a_busy_one_does_not(fake: Any) -> None:
    publisher = EventPublisher(fake)
    reporter = StreamMetricsReporter(publisher, "job", host_type="server", heartbeat_interval_s=0.1)
    reporter.report({"host_type": "server", "fit_start": "t"})
    for step in range(10):  # busy: a new snapshot every 50 ms, well within the interval
        reporter.report({"step": step})
        time.sleep(0.05)
    assert _heartbeats(fake) == []
    _wait(lambda: len(_heartbeats(fake)) >= 2)  # quiet: one per interval
    [first, *_] = _heartbeats(fake)
    assert first["host_type"] == "server" and first["job_id"] == "job"
    assert "metrics" not in first
    check_entry(first)
    thread = reporter._heartbeat_thread
    assert thread is not None and thread.is_alive()
    reporter.shutdown()
    sent = len(_heartbeats(fake))
    time.sleep(0.5)
    assert len(_heartbeats(fake)) == sent  # stopped at shutdown()
    assert not thread.is_alive() and thread not in threading.enumerate()


def test_florist_s_client_form_beats_by_its_uuid(real: redis.Redis, host_port: Any) -> None:
    host, port = host_port
    run_id = str(uuid.uuid4())
    stream = f"test-heartbeat-{run_id}"
    reporter = StreamMetricsReporter(
        host=host, port=port, run_id=run_id, stream=stream, heartbeat_interval_s=0.1
    )
    reporter.report({"host_type": "client", "fit_start": "t"})
    try:
        _wait(lambda: len(_heartbeats(real, stream)) >= 1)
        beat = _heartbeats(real, stream)[0]
        assert beat["host_type"] == "client" and beat["client_uuid"] == run_id
        assert "job_id" not in beat
    finally:
        reporter.shutdown()
        real.delete(stream, run_id)
        reporter.publisher.close()


def test_no_heartbeat_before_the_host_is_known_and_none_when_turned_off(fake: Any) -> None:
    publisher = EventPublisher(fake)
    unknown = StreamMetricsReporter(publisher, "job", heartbeat_interval_s=0.05)
    unknown.report({"no": "host_type yet"})
    off = StreamMetricsReporter(publisher, "job", host_type="server", heartbeat_interval_s=None)
    off.report({"host_type": "server"})
    time.sleep(0.3)
    assert _heartbeats(fake) == []
    assert unknown._heartbeat_thread is None and off._heartbeat_thread is None


def test_a_redis_outage_neither_raises_nor_stalls_training() -> None:
    reporter = StreamMetricsReporter(
        host="127.0.0.1", port=1, run_id=str(uuid.uuid4()), heartbeat_interval_s=0.05
    )
    reporter.report({"host_type": "server", "fit_start": "t"})  # fails, kept, no raise
    thread = reporter._heartbeat_thread
    assert thread is not None and thread.daemon
    time.sleep(0.3)  # the thread keeps failing, once per interval
    assert thread.is_alive() and reporter.heartbeats_sent == 0
    started = time.monotonic()
    for step in range(20):  # the thread never holds the lock while it waits on Redis
        with reporter._lock:
            pass
        reporter.report({"step": step}, 1)
    assert time.monotonic() - started < 5
    reporter.shutdown()
    assert not thread.is_alive()


def test_after_unpickling_the_thread_is_made_again(fake: Any) -> None:
    reporter = StreamMetricsReporter(
        host="127.0.0.1", port=1, run_id=str(uuid.uuid4()), heartbeat_interval_s=0.05
    )
    reporter.report({"host_type": "server", "fit_start": "t"})
    assert reporter._heartbeat_thread is not None
    copy = pickle.loads(pickle.dumps(reporter))
    assert copy._heartbeat_thread is None  # threads stay behind
    copy.publisher._redis = fake  # a Redis that answers, in the new "process"
    copy.report({"round": 1})
    assert copy._heartbeat_thread is not None
    assert copy._heartbeat_thread is not reporter._heartbeat_thread
    _wait(lambda: len(_heartbeats(fake)) >= 1)
    copy.shutdown()
    reporter.shutdown()


def test_heartbeat_interval_must_make_sense(fake: Any) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval_s"):
        StreamMetricsReporter(EventPublisher(fake), "job", heartbeat_interval_s=-1)
