"""The reporter pickles, so FLorist can hand it to a multiprocessing.Process under spawn."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import threading
import uuid

import fakeredis
import pytest
import redis
import spawn_target

from florist_events import EventPublisher, StreamMetricsReporter, check_entry


def test_round_trip_rebuilds_the_lock_and_keeps_the_snapshot() -> None:
    reporter = StreamMetricsReporter(host="127.0.0.1", port=1, run_id=str(uuid.uuid4()))
    reporter.report({"host_type": "server", "fit_start": "t"})  # fails: nothing listens on 1
    assert reporter.pending
    copy = pickle.loads(pickle.dumps(reporter))
    assert copy.metrics == reporter.metrics
    assert copy.pending
    assert copy._lock is not reporter._lock
    assert isinstance(copy._lock, type(threading.RLock()))
    assert copy.publisher._redis is None  # made again when used
    assert copy._next_attempt == 0.0
    copy.report({}, 1, 1, 1)  # usable: tries again at once, and fails without raising


def test_a_reporter_on_a_given_client_says_why_it_cannot_pickle() -> None:
    publisher = EventPublisher(fakeredis.FakeRedis())
    reporter = StreamMetricsReporter(publisher, "job", host_type="server")
    with pytest.raises(TypeError, match=r"from_url or EventPublisher\.from_host"):
        pickle.dumps(reporter)


def test_handed_to_a_spawned_process_it_publishes_from_there(
    real: redis.Redis, host_port: tuple[str, int], unique: str
) -> None:
    host, port = host_port
    run_id = str(uuid.uuid4())
    stream = f"test-spawn-{unique}"
    reporter = StreamMetricsReporter(host=host, port=str(port), run_id=run_id, stream=stream)
    reporter.initialize(id="server-name")
    reporter.report({"host_type": "server", "fit_start": "begin"})  # connected, lock used
    assert real.xlen(stream) == 1

    process = multiprocessing.get_context("spawn").Process(
        target=spawn_target.run_server, args=(reporter, 2)
    )
    process.start()
    process.join(60)
    try:
        assert process.exitcode == 0
        entries = [
            {key.decode(): value.decode() for key, value in fields.items()}
            for _, fields in real.xrange(stream)
        ]
        assert len(entries) == 1 + 2 + 2
        for fields in entries:
            check_entry(fields)
            assert fields["server_uuid"] == run_id
        final = {
            "host_type": "server",
            "fit_start": "begin",
            "rounds": {"1": {"fit_round_start": "start 1"}, "2": {"fit_round_start": "start 2"}},
            "fit_end": "end",
            "shutdown": "down",
        }
        assert json.loads(entries[-1]["metrics"]) == final
        assert json.loads(real.get(run_id)) == final
    finally:
        real.delete(stream, run_id)
        reporter.publisher.close()
