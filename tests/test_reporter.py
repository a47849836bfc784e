"""StreamMetricsReporter: FLorist's snapshot semantics, publish on change, Redis outages."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import pytest
import redis

from tests.redis_server import RedisServer
from worker.events import ClientMetricsEvent, Limits, ServerMetricsEvent, parse_entry
from worker.producer import EventPublisher, StreamMetricsReporter, jsonable


@contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """The reporter's log records as dicts: ``event``, ``log_level`` and the record's fields."""
    records: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            event = getattr(record, "event", record.getMessage())
            fields = getattr(record, "fields", {})
            records.append({"event": event, "log_level": record.levelname.lower(), **fields})

    logger = logging.getLogger("florist_events")
    handler = Collect(level=logging.DEBUG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
CLIENT = "0c316680-1375-4e07-84c3-a732a2e6d03f"
STREAM = "florist:events"


def published(client: redis.Redis) -> list[ServerMetricsEvent | ClientMetricsEvent]:
    events = []
    for _, fields in client.xrange(STREAM):
        event = parse_entry(fields)
        assert isinstance(event, ServerMetricsEvent | ClientMetricsEvent)
        events.append(event)
    return events


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


def server_reporter(client: redis.Redis, **options: Any) -> StreamMetricsReporter:
    options.setdefault("retry_interval_s", 0.0)
    return StreamMetricsReporter(EventPublisher(client), JOB, host_type="server", **options)


def client_reporter(client: redis.Redis, **options: Any) -> StreamMetricsReporter:
    options.setdefault("retry_interval_s", 0.0)
    return StreamMetricsReporter(EventPublisher(client), JOB, host_type="client", **options)


# --- interface ----------------------------------------------------------------------------------


def test_has_fl4health_reporter_signatures() -> None:
    report = inspect.signature(StreamMetricsReporter.report)
    assert list(report.parameters) == ["self", "data", "round", "epoch", "step"]
    assert all(report.parameters[name].default is None for name in ("round", "epoch", "step"))
    initialize = inspect.signature(StreamMetricsReporter.initialize)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in initialize.parameters.values())
    assert list(inspect.signature(StreamMetricsReporter.shutdown).parameters) == ["self"]


def test_does_not_import_fl4health() -> None:
    assert "fl4health" not in sys.modules
    source = inspect.getsource(sys.modules[StreamMetricsReporter.__module__])
    assert "import fl4health" not in source
    assert "from fl4health" not in source


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host_type": "worker"}, "host_type"),
        ({"host_type": "server", "client_uuid": CLIENT}, "only for host_type='client'"),
        ({"host_type": "client", "client_uuid": ""}, "client_uuid"),
        ({"host_type": "server", "retry_interval_s": -1}, "retry_interval_s"),
        ({"host_type": "server", "max_retry_interval_s": -1}, "max_retry_interval_s"),
        ({"host_type": "server", "shutdown_attempts": 0}, "shutdown_attempts"),
    ],
)
def test_constructor_refuses_bad_options(
    client: fakeredis.FakeRedis, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StreamMetricsReporter(EventPublisher(client), JOB, **options)


def test_constructor_refuses_empty_job(client: fakeredis.FakeRedis) -> None:
    with pytest.raises(ValueError, match="job_id"):
        StreamMetricsReporter(EventPublisher(client), "", host_type="server")


# --- snapshot semantics -----------------------------------------------------------------------


def test_round_none_updates_the_top_level(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    reporter.report({"host_type": "server", "fit_start": "t0"})
    reporter.report({"fit_end": "t1"})

    assert reporter.metrics == {"host_type": "server", "fit_start": "t0", "fit_end": "t1"}
    events = published(client)
    assert [event.metrics for event in events] == [
        {"host_type": "server", "fit_start": "t0"},
        {"host_type": "server", "fit_start": "t0", "fit_end": "t1"},
    ]
    assert all(event.job_id == JOB for event in events)


def test_round_updates_that_round(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    reporter.report({"fit_start": "t0"})
    reporter.report({"fit_round_start": "a"}, round=1)
    reporter.report({"fit_round_end": "b"}, round=1)
    reporter.report({"fit_round_start": "c"}, round=2)
    reporter.report({"fit_round_start": "a2"}, round=1)

    assert reporter.metrics == {
        "fit_start": "t0",
        "rounds": {
            "1": {"fit_round_start": "a2", "fit_round_end": "b"},
            "2": {"fit_round_start": "c"},
        },
    }
    assert published(client)[-1].metrics == reporter.metrics
    assert len(published(client)) == 5


@pytest.mark.parametrize(
    "position",
    [{"round": 1, "epoch": 1}, {"round": 1, "step": 3}, {"round": 2, "epoch": 1, "step": 3}],
)
def test_epoch_and_step_reports_change_nothing(
    client: fakeredis.FakeRedis, position: dict[str, int]
) -> None:
    reporter = server_reporter(client)
    reporter.report({"fit_start": "t0"})
    reporter.report({"loss": 0.1, "fit_start": "changed"}, **position)

    assert reporter.metrics == {"fit_start": "t0"}
    assert len(published(client)) == 1


def test_without_round_epoch_and_step_do_not_matter(client: fakeredis.FakeRedis) -> None:
    # FLorist's reporter checks ``round is None`` first: such a call updates the top level.
    reporter = server_reporter(client)
    reporter.report({"a": 1}, epoch=3)
    reporter.report({"b": 2}, step=9)
    assert reporter.metrics == {"a": 1, "b": 2}
    assert len(published(client)) == 2


def test_publishes_only_on_change(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    reporter.report({})
    assert published(client) == []
    reporter.report({"a": 1})
    reporter.report({"a": 1})
    reporter.report({"a": 1.0})  # the JSON text "1.0" differs from "1": a change
    reporter.report({"a": 1.0}, round=None)
    reporter.report({"r": 1}, round=1)
    reporter.report({"r": 1}, round=1)
    assert [event.metrics for event in published(client)] == [
        {"a": 1},
        {"a": 1.0},
        {"a": 1.0, "rounds": {"1": {"r": 1}}},
    ]


def test_nan_does_not_count_as_a_change_every_time(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    reporter.report({"loss": math.nan})
    reporter.report({"loss": math.nan})
    [event] = published(client)
    assert event.metrics == {"loss": "NaN"}


def test_values_are_copied_and_made_json(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    data: dict[str, Any] = {
        "fit_start": dt.datetime(2024, 11, 20, 14, 0, 0, 100000),
        "nested": {"values": (1, 2)},
    }
    reporter.report(data)
    data["nested"]["values"] = "mutated later"
    reporter.report({})  # no change: nothing more published

    [event] = published(client)
    assert event.metrics == {
        "fit_start": "2024-11-20 14:00:00.100000",
        "nested": {"values": [1, 2]},
    }
    assert reporter.metrics["nested"] == {"values": [1, 2]}


def test_jsonable_handles_odd_values() -> None:
    class Scalar:
        def tolist(self) -> float:
            return 0.25

    class Broken:
        def tolist(self) -> Any:
            raise RuntimeError("no")

        def __str__(self) -> str:
            return "broken"

    value = {1: Scalar(), "d": dt.date(2024, 1, 2), "s": {3}, "o": Broken(), "n": None}
    assert jsonable(value) == {"1": 0.25, "d": "2024-01-02", "s": [3], "o": "broken", "n": None}


def test_non_dict_data_is_ignored_without_raising(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    with capture_logs() as logs:
        reporter.report(["not", "a", "dict"])  # type: ignore[arg-type]
    assert reporter.metrics == {}
    assert any(log["event"] == "report_data_not_a_dict" for log in logs)


def test_sample_server_snapshot_is_rebuilt(
    client: fakeredis.FakeRedis, sample_entries: list[dict[str, str]]
) -> None:
    final = json.loads(
        [entry for entry in sample_entries if entry["type"] == "server.metrics"][-1]["metrics"]
    )
    reporter = server_reporter(client)
    calls = 0
    for key, value in final.items():
        if key != "rounds":
            reporter.report({key: value})
            calls += 1
            continue
        for round_key, round_data in value.items():
            for name, item in round_data.items():
                reporter.report({name: item}, round=int(round_key))
                reporter.report({"ignored": 1}, round=int(round_key), epoch=1)
                calls += 1
    reporter.shutdown()

    events = published(client)
    assert len(events) == calls
    assert events[-1].metrics == final
    assert "fit_end" in events[-1].metrics


# --- clients -------------------------------------------------------------------------------------


def test_client_publishes_client_metrics(client: fakeredis.FakeRedis) -> None:
    reporter = client_reporter(client, client_uuid=CLIENT)
    reporter.initialize(id="fl4health-name")  # an explicit uuid wins
    reporter.report({"host_type": "client", "initialized": "t"})

    [event] = published(client)
    assert isinstance(event, ClientMetricsEvent)
    assert (event.client_uuid, event.metrics) == (
        CLIENT,
        {"host_type": "client", "initialized": "t"},
    )
    assert reporter.initialize_kwargs == {"id": "fl4health-name"}


def test_client_uuid_from_initialize(client: fakeredis.FakeRedis) -> None:
    reporter = client_reporter(client)
    reporter.initialize(id=CLIENT)
    reporter.report({"a": 1})
    [event] = published(client)
    assert isinstance(event, ClientMetricsEvent)
    assert event.client_uuid == CLIENT


def test_client_without_uuid_holds_the_snapshot(client: fakeredis.FakeRedis) -> None:
    reporter = client_reporter(client)
    with capture_logs() as logs:
        reporter.report({"a": 1})
        reporter.report({"a": 2})
    assert published(client) == []
    assert reporter.pending
    assert [log["event"] for log in logs] == ["metrics_held_without_client_uuid"]

    reporter.initialize(id=CLIENT)
    [event] = published(client)
    assert isinstance(event, ClientMetricsEvent)
    assert (event.client_uuid, event.metrics) == (CLIENT, {"a": 2})
    assert not reporter.pending


# --- outages (fakeredis) --------------------------------------------------------------------------


def test_redis_down_then_back_publishes_the_latest_snapshot_once(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis
) -> None:
    reporter = server_reporter(client)
    reporter.report({"fit_start": "t0"})
    server.connected = False
    with capture_logs() as logs:
        reporter.report({"a": 1})
        reporter.report({"b": 2}, round=1)
        reporter.report({"loss": 0.3}, round=1, step=5)
    assert reporter.pending
    assert [log["event"] for log in logs].count("metrics_publish_failed") == 3
    assert all(log["log_level"] == "warning" for log in logs)

    server.connected = True
    with capture_logs() as logs:
        reporter.report({"loss": 0.2}, round=1, step=6)  # a per-step call flushes
    events = published(client)
    assert len(events) == 2
    assert events[-1].metrics == {"fit_start": "t0", "a": 1, "rounds": {"1": {"b": 2}}}
    assert not reporter.pending
    assert any(log["event"] == "metrics_publish_recovered" for log in logs)

    reporter.report({"loss": 0.1}, round=1, step=7)
    assert len(published(client)) == 2


def test_any_publisher_error_is_swallowed(client: fakeredis.FakeRedis) -> None:
    class Exploding(EventPublisher):
        fail = True

        def publish_fields(self, fields: Any, **options: Any) -> str:
            if self.fail:
                raise RuntimeError("anything at all")
            return super().publish_fields(fields, **options)

    publisher = Exploding(client)
    reporter = StreamMetricsReporter(publisher, JOB, host_type="server", retry_interval_s=0)
    reporter.report({"a": 1})
    assert reporter.pending
    publisher.fail = False
    reporter.shutdown()
    [event] = published(client)
    assert event.metrics == {"a": 1}


def test_failed_attempts_back_off(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis
) -> None:
    attempts = 0

    class Counting(EventPublisher):
        def publish_fields(self, fields: Any, **options: Any) -> str:
            nonlocal attempts
            attempts += 1
            return super().publish_fields(fields, **options)

    reporter = StreamMetricsReporter(
        Counting(client), JOB, host_type="server", retry_interval_s=60, max_retry_interval_s=60
    )
    server.connected = False
    for i in range(20):
        reporter.report({"i": i})
    assert attempts == 1  # one failed attempt per retry interval, not one per call

    server.connected = True
    reporter.report({"i": 99})
    assert attempts == 1 and reporter.pending  # still inside the interval
    reporter.shutdown()  # shutdown ignores the interval
    assert attempts == 2
    [event] = published(client)
    assert event.metrics == {"i": 99}


def test_backoff_doubles_up_to_the_maximum(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis
) -> None:
    reporter = server_reporter(client, retry_interval_s=1, max_retry_interval_s=3)
    server.connected = False
    delays = []
    for i in range(4):
        reporter._next_attempt = 0.0  # let each call try
        with capture_logs() as logs:
            reporter.report({"i": i})
        delays.extend(log["retry_in_s"] for log in logs if log["event"] == "metrics_publish_failed")
    assert delays == [1, 2, 3, 3]


def test_shutdown_is_bounded_when_redis_stays_down(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis
) -> None:
    reporter = server_reporter(client, shutdown_attempts=3, shutdown_retry_wait_s=0.05)
    server.connected = False
    reporter.report({"fit_end": "t"})
    started = time.monotonic()
    with capture_logs() as logs:
        reporter.shutdown()
    assert time.monotonic() - started < 1
    events = [log["event"] for log in logs]
    assert events.count("metrics_publish_failed") == 3
    assert events[-1] == "metrics_snapshot_lost"


def test_shutdown_without_changes_writes_nothing(client: fakeredis.FakeRedis) -> None:
    reporter = server_reporter(client)
    reporter.shutdown()
    reporter.report({"a": 1})
    reporter.shutdown()
    assert len(published(client)) == 1


def test_a_snapshot_the_worker_would_refuse_is_not_retried(client: fakeredis.FakeRedis) -> None:
    publisher = EventPublisher(client, limits=Limits(max_metrics_depth=2))
    reporter = StreamMetricsReporter(publisher, JOB, host_type="server", retry_interval_s=0)
    with capture_logs() as logs:
        reporter.report({"deep": {"er": {"est": 1}}})
        reporter.report({}, step=1)
        reporter.shutdown()
    assert published(client) == []
    assert [log["event"] for log in logs] == ["metrics_snapshot_refused"]
    assert not reporter.pending

    reporter.report({"deep": 1})  # the next change is published again
    [event] = published(client)
    assert event.metrics == {"deep": 1}


# --- outages (a real redis-server killed and restarted) ------------------------------------------


@pytest.mark.redis_server
def test_real_redis_down_and_back(private_redis: RedisServer) -> None:
    publisher = EventPublisher.from_url(private_redis.url, timeout_s=0.2)
    reporter = StreamMetricsReporter(publisher, JOB, host_type="client", client_uuid=CLIENT)
    reader = redis.Redis.from_url(private_redis.url)
    try:
        reporter.report({"host_type": "client", "initialized": "t0"})
        assert reader.xlen(STREAM) == 1

        private_redis.stop()
        slowest = 0.0
        for i in range(1, 6):
            started = time.monotonic()
            reporter.report({"fit_round_start": f"r{i}"}, round=i)
            reporter.report({"loss": 0.1}, round=i, epoch=1)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0
        assert reporter.pending

        private_redis.start()  # same port, data kept in its append-only file
        reporter._next_attempt = 0.0  # skip the rest of the 1 s retry interval
        reporter.report({"loss": 0.05}, round=5, step=10)

        fields = [entry for _, entry in reader.xrange(STREAM)]
        assert len(fields) == 2
        event = parse_entry(fields[-1])
        assert isinstance(event, ClientMetricsEvent)
        assert event.client_uuid == CLIENT
        assert event.metrics == {
            "host_type": "client",
            "initialized": "t0",
            "rounds": {str(i): {"fit_round_start": f"r{i}"} for i in range(1, 6)},
        }
        assert not reporter.pending
    finally:
        reader.close()
        publisher.redis.close()


@pytest.mark.redis_server
def test_real_redis_back_before_shutdown(private_redis: RedisServer) -> None:
    publisher = EventPublisher.from_url(private_redis.url, timeout_s=0.2)
    reporter = StreamMetricsReporter(publisher, JOB, host_type="server", retry_interval_s=60)
    reader = redis.Redis.from_url(private_redis.url)
    try:
        private_redis.stop()
        reporter.report({"fit_start": "t0"})
        reporter.report({"fit_end": "t1", "shutdown": "t2"})
        private_redis.start()
        reporter.shutdown()
        [(_, fields)] = reader.xrange(STREAM)
        event = parse_entry(fields)
        assert isinstance(event, ServerMetricsEvent)
        assert event.metrics == {"fit_start": "t0", "fit_end": "t1", "shutdown": "t2"}
    finally:
        reader.close()
        publisher.redis.close()


def test_an_unresponsive_redis_costs_one_socket_timeout_per_interval() -> None:
    # A server that accepts connections (the kernel's backlog does) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        publisher = EventPublisher.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
        reporter = StreamMetricsReporter(publisher, JOB, host_type="server", retry_interval_s=60)
        durations = []
        with capture_logs() as logs:
            for i in range(10):
                started = time.monotonic()
                reporter.report({"i": i})
                durations.append(time.monotonic() - started)
        publisher.redis.close()
    assert 0.15 < durations[0] < 1.0
    assert max(durations[1:]) < 0.05
    failures = [log for log in logs if log["event"] == "metrics_publish_failed"]
    assert len(failures) == 1
    assert "Timeout" in failures[0]["error"]
    assert reporter.pending


# --- identities: job id, uuids, and what cannot be published ---------------------------------


def test_shutdown_does_not_wait_for_an_identity_that_cannot_come(
    client: fakeredis.FakeRedis,
) -> None:
    reporter = client_reporter(client, shutdown_attempts=5, shutdown_retry_wait_s=1)
    reporter.report({"a": 1})
    started = time.monotonic()
    with capture_logs() as logs:
        reporter.shutdown()
    assert time.monotonic() - started < 0.5
    assert [log["event"] for log in logs] == ["metrics_snapshot_lost"]
    assert logs[0]["reason"] == "metrics_held_without_client_uuid"
    assert published(client) == []


def test_a_server_on_a_publisher_may_carry_its_uuid_too(client: fakeredis.FakeRedis) -> None:
    server_uuid = "d73243cf-8b89-473b-9607-8cd0253a101d"
    reporter = StreamMetricsReporter(
        EventPublisher(client), JOB, server_uuid, host_type="server", retry_interval_s=0
    )
    reporter.initialize(id="fl4health-server-name")  # the given uuid stays
    reporter.report({"host_type": "server", "fit_start": "t"})
    [event] = published(client)
    assert isinstance(event, ServerMetricsEvent)
    assert event.job_id == JOB
    [(_, fields)] = client.xrange(STREAM)
    assert fields[b"server_uuid"] == server_uuid.encode()
    assert client.get(server_uuid) is None  # no FLorist key unless snapshot_key=True


def test_snapshot_key_on_a_publisher_when_asked(client: fakeredis.FakeRedis) -> None:
    reporter = StreamMetricsReporter(
        EventPublisher(client), JOB, host_type="client", client_uuid=CLIENT, snapshot_key=True
    )
    reporter.report({"host_type": "client", "initialized": "t"})
    assert json.loads(client.get(CLIENT)) == {"host_type": "client", "initialized": "t"}
    assert client.get(CLIENT).decode() == json.dumps(reporter.metrics)  # FLorist's text
