"""The drop-in form: StreamMetricsReporter(host=..., port=..., run_id=...) as FLorist makes it.

Driven through the calls FL4Health's ReportsManager makes for a server and a client, its
``<run_id>`` key must hold, after every call, what FLorist's own reporter would have
written (:mod:`florist_reference`), and its events must name the job by uuid.
"""

from __future__ import annotations

import inspect
import json
import math
import socket
import time
import types
import uuid
from typing import Any

import fakeredis
import pytest
import redis
from florist_reference import (
    FloristReporterModel,
    client_calls,
    play,
    server_calls,
    wait_for_metric_finds,
)

import florist_events.publisher
from florist_events import StreamMetricsReporter, check_entry

STREAM = "florist:events"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch, server: fakeredis.FakeServer) -> list[dict[str, Any]]:
    """Reporters in FLorist's form connect to a fakeredis; the options they gave are kept."""
    options_seen: list[dict[str, Any]] = []

    def fake_client(**options: Any) -> fakeredis.FakeRedis:
        options_seen.append(options)
        return fakeredis.FakeRedis(server=server, **options)

    monkeypatch.setattr(florist_events.publisher, "redis", types.SimpleNamespace(Redis=fake_client))
    return options_seen


@pytest.fixture
def reader(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


def stream_entries(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _, fields in client.xrange(STREAM)
    ]


def test_constructed_exactly_like_florist_s_reporter() -> None:
    parameters = list(inspect.signature(StreamMetricsReporter).parameters.values())
    assert [p.name for p in parameters[:3]] == ["host", "port", "run_id"]
    assert parameters[2].default is None
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[3:])
    report = inspect.signature(StreamMetricsReporter.report)
    assert list(report.parameters) == ["self", "data", "round", "epoch", "step"]
    # FLorist's two call sites: launch_local_server and the client service's start route.
    server_uuid, client_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    for reporter in (
        StreamMetricsReporter(host="localhost", port="6379", run_id=server_uuid),
        StreamMetricsReporter("localhost", "6379", client_uuid),
    ):
        assert reporter.snapshot_key
        assert reporter.florist_form
        assert reporter.host == "localhost" and reporter.port == "6379"
    assert reporter.run_id == client_uuid


def test_connects_lazily_with_producer_options(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis
) -> None:
    reporter = StreamMetricsReporter(host="redis-host", port="6380", run_id=str(uuid.uuid4()))
    assert made == []  # nothing made or connected until there is something to write
    reporter.report({"host_type": "server", "fit_start": "t"})
    [options] = made
    assert (options["host"], options["port"]) == ("redis-host", 6380)
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.5
    assert options["retry"].get_retries() == 0


@pytest.mark.parametrize("datetime_values", [False, True])
def test_server_run_keeps_florist_s_key_and_publishes_by_server_uuid(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis, datetime_values: bool
) -> None:
    server_uuid = str(uuid.uuid4())
    reporter = StreamMetricsReporter(host="localhost", port="6379", run_id=server_uuid)
    model = FloristReporterModel(run_id=server_uuid)
    found_fit_start_after: int | None = None
    for index, call in enumerate(server_calls(rounds=3, datetime_values=datetime_values)):
        play(reporter, call)
        play(model, call)
        if model.key_text is not None:
            assert reader.get(server_uuid).decode() == model.key_text, f"after call {index}"
        if found_fit_start_after is None and wait_for_metric_finds(
            reader, server_uuid, "fit_start"
        ):
            found_fit_start_after = index
    assert found_fit_start_after == 1  # the first report: FLorist's start route goes on

    published = stream_entries(reader)
    assert published
    for fields in published:
        check_entry(fields)
        assert fields["type"] == "server.metrics"
        assert fields["server_uuid"] == server_uuid
        assert "job_id" not in fields
    assert json.loads(published[-1]["metrics"]) == json.loads(model.key_text or "")
    assert not reporter.pending


def test_client_run_keeps_florist_s_key_and_publishes_by_client_uuid(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis
) -> None:
    client_uuid = str(uuid.uuid4())
    reporter = StreamMetricsReporter(host="localhost", port="6379", run_id=client_uuid)
    model = FloristReporterModel(run_id=client_uuid)
    calls = client_calls(rounds=2, epochs=2, steps=3)
    for index, call in enumerate(calls):
        play(reporter, call)
        play(model, call)
        if model.key_text is not None:
            assert reader.get(client_uuid).decode() == model.key_text, f"after call {index}"
    assert reporter.run_id == client_uuid  # initialize(id=client_name) does not replace it

    published = stream_entries(reader)
    # Per-step and per-epoch calls change nothing, so they publish nothing.
    round_level = [call for call in calls if call[0] == "report" and len(call[1]) <= 2]
    assert len(published) == len(round_level)
    for fields in published:
        check_entry(fields)
        assert (fields["type"], fields["client_uuid"]) == ("client.metrics", client_uuid)
        assert "job_id" not in fields and "server_uuid" not in fields
    last = json.loads(published[-1]["metrics"])
    assert last == json.loads(model.key_text or "")
    assert set(last["rounds"]) == {"1", "2"} and "shutdown" in last


def test_key_and_entry_are_written_together(
    made: list[dict[str, Any]], server: fakeredis.FakeServer, reader: fakeredis.FakeRedis
) -> None:
    run_id = str(uuid.uuid4())
    reporter = StreamMetricsReporter(
        host="localhost", port="6379", run_id=run_id, retry_interval_s=0
    )
    reporter.report({"host_type": "client", "initialized": "t0"})
    assert reader.xlen(STREAM) == 1 and reader.get(run_id) is not None
    server.connected = False
    reporter.report({"a": 1})
    server.connected = True
    assert reader.xlen(STREAM) == 1
    assert json.loads(reader.get(run_id)) == {"host_type": "client", "initialized": "t0"}
    reporter.report({}, round=1, step=3)  # any later call publishes the pending snapshot
    assert reader.xlen(STREAM) == 2
    assert json.loads(reader.get(run_id)) == {"host_type": "client", "initialized": "t0", "a": 1}


def test_non_finite_numbers_are_strings_in_the_key_too(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis
) -> None:
    run_id = str(uuid.uuid4())
    reporter = StreamMetricsReporter(host="localhost", port="6379", run_id=run_id)
    model = FloristReporterModel(run_id=run_id)
    for reporter_or_model in (reporter, model):
        reporter_or_model.report({"host_type": "server", "fit_start": "t"})
        reporter_or_model.report({"val - loss - aggregated": math.nan}, 1)
    # FLorist wrote a bare NaN (Python's json reads it, JSON.parse does not): here the string.
    assert "NaN" in (model.key_text or "") and '"NaN"' not in (model.key_text or "")
    assert reader.get(run_id).decode() == (model.key_text or "").replace("NaN", '"NaN"')


def test_run_id_none_as_in_florist(made: list[dict[str, Any]], reader: fakeredis.FakeRedis) -> None:
    named = StreamMetricsReporter(host="localhost", port="6379")
    named.initialize(id="client-7")
    assert named.run_id == "client-7"
    fresh = StreamMetricsReporter(host="localhost", port="6379")
    fresh.report({"host_type": "client"})  # report() initializes first, as FLorist's does
    assert fresh.initialized
    assert uuid.UUID(fresh.run_id or "").version == 4
    assert json.loads(reader.get(fresh.run_id or "")) == {"host_type": "client"}


def test_host_type_taken_from_the_snapshot_or_given(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis
) -> None:
    run_id = str(uuid.uuid4())
    reporter = StreamMetricsReporter(host="localhost", port="6379", run_id=run_id)
    reporter.report({"Criterion": "CrossEntropyLoss"})  # before host_type: only the key
    assert reader.xlen(STREAM) == 0
    assert json.loads(reader.get(run_id)) == {"Criterion": "CrossEntropyLoss"}
    assert reporter.pending
    reporter.report({"host_type": "client", "initialized": "t"})
    [fields] = stream_entries(reader)
    assert fields["client_uuid"] == run_id
    assert json.loads(fields["metrics"]) == {
        "Criterion": "CrossEntropyLoss",
        "host_type": "client",
        "initialized": "t",
    }

    declared = StreamMetricsReporter(
        host="localhost", port="6379", run_id=str(uuid.uuid4()), host_type="server", job_id="j"
    )
    declared.report({"a": 1})
    fields = stream_entries(reader)[-1]
    assert (fields["type"], fields["server_uuid"], fields["job_id"]) == (
        "server.metrics",
        declared.run_id,
        "j",
    )


def test_snapshot_key_can_be_turned_off(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis
) -> None:
    run_id = str(uuid.uuid4())
    reporter = StreamMetricsReporter(
        host="localhost", port="6379", run_id=run_id, snapshot_key=False
    )
    reporter.report({"host_type": "server", "fit_start": "t"})
    assert reader.xlen(STREAM) == 1
    assert reader.get(run_id) is None


def test_stream_from_florist_stream(
    made: list[dict[str, Any]], reader: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLORIST_STREAM", "elsewhere")
    reporter = StreamMetricsReporter(host="localhost", port="6379", run_id=str(uuid.uuid4()))
    reporter.report({"host_type": "server"})
    assert reader.xlen("elsewhere") == 1 and reader.xlen(STREAM) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "host= and port="),
        ({"host": "h"}, "host= and port="),
        ({"host": "h", "port": "p"}, "port must be a number"),
        ({"host": "h", "port": 1, "run_id": ""}, "run_id"),
        ({"host": "h", "port": 1, "host_type": "worker"}, "host_type"),
        ({"host": "h", "port": 1, "run_id": "a", "client_uuid": "b"}, "pass one"),
    ],
)
def test_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamMetricsReporter(**arguments)


def test_never_raises_or_stalls_when_redis_is_away() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    reporter = StreamMetricsReporter(host="127.0.0.1", port=str(port), run_id=str(uuid.uuid4()))
    started = time.monotonic()
    for call in server_calls(rounds=5):
        play(reporter, call)
    assert time.monotonic() - started < 5  # one failed connect per retry interval, and shutdown's
    assert reporter.pending


def test_an_unanswering_redis_costs_one_timeout_per_interval() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        reporter = StreamMetricsReporter(
            host="127.0.0.1",
            port=port,
            run_id=str(uuid.uuid4()),
            timeout_s=0.2,
            retry_interval_s=60,
        )
        durations = []
        for i in range(10):
            started = time.monotonic()
            reporter.report({"host_type": "server", "i": i})
            durations.append(time.monotonic() - started)
        reporter.publisher.close()
    assert 0.15 < durations[0] < 1.0
    assert max(durations[1:]) < 0.05


def test_equal_when_host_port_and_run_id_are(made: list[dict[str, Any]]) -> None:
    # FLorist's later reporter compares so (its tests assert on the reporters it builds).
    run_id = str(uuid.uuid4())
    first = StreamMetricsReporter(host="h", port="1", run_id=run_id)
    assert first == StreamMetricsReporter(host="h", port="1", run_id=run_id)
    assert hash(first) == hash(StreamMetricsReporter(host="h", port="1", run_id=run_id))
    assert first != StreamMetricsReporter(host="h", port="2", run_id=run_id)
    assert first != StreamMetricsReporter(host="h", port="1", run_id=str(uuid.uuid4()))
    on_a_publisher = StreamMetricsReporter(first.publisher, "job", host_type="server")
    assert on_a_publisher == on_a_publisher
    assert on_a_publisher != StreamMetricsReporter(first.publisher, "job", host_type="server")
