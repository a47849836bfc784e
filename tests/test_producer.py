"""EventPublisher (fakeredis and real Redis) and the ``florist-worker emit`` command."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
from typing import Any

import fakeredis
import pytest
import redis

from tests.redis_server import RedisServer, free_port
from worker.commands import emit
from worker.entities import JobStatus
from worker.events import (
    EVENT_TYPES,
    ClientMetricsEvent,
    JobStatusEvent,
    Limits,
    ServerMetricsEvent,
    parse_entry,
)
from worker.producer import EventPublisher, InvalidEvent

JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
CLIENT = "0c316680-1375-4e07-84c3-a732a2e6d03f"
STREAM = "florist:events"


def entries(client: redis.Redis, stream: str = STREAM) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(entry_id.decode(), fields) for entry_id, fields in client.xrange(stream)]


def strict_loads(text: str | bytes) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} in JSON text")

    return json.loads(text, parse_constant=refuse)


def isolated_fake() -> fakeredis.FakeRedis:
    """A fakeredis on a server of its own, so CONFIG changes cannot leak into other tests."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


# --- event methods ---------------------------------------------------------------------


def test_server_metrics_writes_a_v1_entry(fake_redis: redis.Redis) -> None:
    metrics = {"host_type": "server", "rounds": {"1": {"fit_round_start": "x", "loss": 0.5}}}
    entry_id = EventPublisher(fake_redis).server_metrics(JOB, metrics)

    [(stored_id, fields)] = entries(fake_redis)
    assert entry_id == stored_id
    event = parse_entry(fields)
    assert isinstance(event, ServerMetricsEvent)
    assert (event.job_id, event.metrics) == (JOB, metrics)
    assert fields[b"v"] == b"1"
    assert set(fields) == {b"v", b"type", b"job_id", b"metrics", b"sent_at"}


def test_client_metrics_writes_a_v1_entry(fake_redis: redis.Redis) -> None:
    metrics = {"host_type": "client", "initialized": "2024-11-20 14:00:05.100000"}
    entry_id = EventPublisher(fake_redis).client_metrics(JOB, CLIENT, metrics)

    [(stored_id, fields)] = entries(fake_redis)
    assert entry_id == stored_id
    event = parse_entry(fields)
    assert isinstance(event, ClientMetricsEvent)
    assert (event.job_id, event.client_uuid, event.metrics) == (JOB, CLIENT, metrics)


@pytest.mark.parametrize("status", [JobStatus.IN_PROGRESS, "FINISHED_SUCCESSFULLY"])
def test_status_accepts_the_enum_or_its_value(fake_redis: redis.Redis, status: Any) -> None:
    EventPublisher(fake_redis).status(JOB, status)

    [(_, fields)] = entries(fake_redis)
    event = parse_entry(fields)
    assert isinstance(event, JobStatusEvent)
    assert event.status == JobStatus(status)
    assert event.error_message is None
    assert b"error_message" not in fields


def test_status_with_error_message(fake_redis: redis.Redis) -> None:
    EventPublisher(fake_redis).status(JOB, JobStatus.FINISHED_WITH_ERROR, error_message="OOM")

    [(_, fields)] = entries(fake_redis)
    event = parse_entry(fields)
    assert isinstance(event, JobStatusEvent)
    assert (event.status, event.error_message) == (JobStatus.FINISHED_WITH_ERROR, "OOM")


def test_sent_at_is_a_utc_iso_timestamp(fake_redis: redis.Redis) -> None:
    before = dt.datetime.now(dt.UTC)
    EventPublisher(fake_redis).status(JOB, JobStatus.IN_PROGRESS)
    after = dt.datetime.now(dt.UTC)

    [(_, fields)] = entries(fake_redis)
    sent_at = dt.datetime.fromisoformat(fields[b"sent_at"].decode())
    assert sent_at.utcoffset() == dt.timedelta(0)
    assert before <= sent_at <= after


def test_ids_are_text_with_decode_responses_too() -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    publisher = EventPublisher(client)
    first = publisher.status(JOB, JobStatus.IN_PROGRESS)
    second = publisher.server_metrics(JOB, {"a": 1})
    assert isinstance(first, str)
    assert [entry_id for entry_id, _ in client.xrange(STREAM)] == [first, second]


def test_custom_stream(fake_redis: redis.Redis) -> None:
    EventPublisher(fake_redis, stream="other").status(JOB, JobStatus.IN_PROGRESS)
    assert fake_redis.xlen("other") == 1
    assert not fake_redis.exists(STREAM)


def test_non_finite_floats_become_strings(fake_redis: redis.Redis) -> None:
    metrics = {
        "loss": math.nan,
        "best": math.inf,
        "worst": -math.inf,
        "rounds": {"1": {"values": [1.5, math.nan]}},
    }
    EventPublisher(fake_redis).client_metrics(JOB, CLIENT, metrics)

    [(_, fields)] = entries(fake_redis)
    decoded = strict_loads(fields[b"metrics"])
    assert decoded == {
        "loss": "NaN",
        "best": "Infinity",
        "worst": "-Infinity",
        "rounds": {"1": {"values": [1.5, "NaN"]}},
    }
    assert b"null" not in fields[b"metrics"]


class _NotJson:
    pass


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.server_metrics("", {}), "job_id"),
        (lambda p: p.server_metrics(42, {}), "job_id"),
        (lambda p: p.server_metrics(JOB, [1, 2]), "metrics must be a dict"),
        (lambda p: p.server_metrics(JOB, "{}"), "metrics must be a dict"),
        (lambda p: p.server_metrics(JOB, {1: "a"}), "keys must be text"),
        (lambda p: p.server_metrics(JOB, {"when": _NotJson()}), "not JSON serializable"),
        (lambda p: p.client_metrics(JOB, "", {}), "client_uuid"),
        (lambda p: p.client_metrics(JOB, None, {}), "client_uuid"),
        (lambda p: p.status(JOB, "DONE"), "unknown status 'DONE'"),
        (lambda p: p.status(JOB, None), "status"),
        (lambda p: p.status(JOB, JobStatus.FINISHED_WITH_ERROR, error_message=3), "error_message"),
        (lambda p: p.server_metrics(JOB, {"a": {"b": {"c": {"d": {}}}}}), "nested 5 levels deep"),
        (lambda p: p.server_metrics(JOB, {"blob": "x" * 2000}), "over the limit of 1024"),
        (lambda p: p.publish_fields({}), "at least one field"),
    ],
)
def test_bad_arguments_raise_before_writing(
    fake_redis: redis.Redis, call: Any, message: str
) -> None:
    publisher = EventPublisher(fake_redis, limits=Limits(max_entry_bytes=1024, max_metrics_depth=4))
    with pytest.raises(InvalidEvent, match=message):
        call(publisher)
    assert not fake_redis.exists(STREAM)


def test_invalid_event_is_a_value_error(fake_redis: redis.Redis) -> None:
    with pytest.raises(ValueError, match="unknown status"):
        EventPublisher(fake_redis).status(JOB, "nope")


@pytest.mark.parametrize("maxlen", [0, -1, 1.5, True, "10"])
def test_bad_maxlen_is_refused(fake_redis: redis.Redis, maxlen: Any) -> None:
    with pytest.raises(ValueError, match="maxlen"):
        EventPublisher(fake_redis, maxlen=maxlen)


def test_publish_fields_writes_the_map_as_given(fake_redis: redis.Redis) -> None:
    fields = {"v": "9", "type": "job.status", "job_id": JOB, "extra": "kept"}
    entry_id = EventPublisher(fake_redis).publish_fields(fields)

    [(stored_id, stored)] = entries(fake_redis)
    assert entry_id == stored_id
    assert {k.decode(): v.decode() for k, v in stored.items()} == fields


# --- trimming -----------------------------------------------------------------------------


def test_maxlen_is_approximate_on_fakeredis() -> None:
    client = isolated_fake()
    publisher = EventPublisher(client, maxlen=10)
    for _ in range(50):
        publisher.publish_fields({"v": "1"})
    # Approximate trimming only drops whole nodes (up to 100 small entries by default):
    # an exact MAXLEN would have left 10.
    assert client.xlen(STREAM) == 50


def test_maxlen_trims_on_fakeredis() -> None:
    client = isolated_fake()
    publisher = EventPublisher(client, maxlen=150)
    first = publisher.status(JOB, JobStatus.IN_PROGRESS)
    for _ in range(999):
        publisher.publish_fields({"v": "1"})
    length = client.xlen(STREAM)
    assert 150 <= length < 300
    assert entries(client)[0][0] != first


def test_maxlen_none_never_trims() -> None:
    client = isolated_fake()
    publisher = EventPublisher(client, maxlen=None)
    for _ in range(300):
        publisher.publish_fields({"v": "1"})
    assert client.xlen(STREAM) == 300


@pytest.mark.redis_server
def test_maxlen_trims_real_redis_to_about_maxlen(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.config_set("stream-node-max-entries", 10)
        publisher = EventPublisher(client, maxlen=100)
        ids = [publisher.server_metrics(JOB, {"i": i}) for i in range(1000)]
        length = client.xlen(STREAM)
        assert 100 <= length <= 110
        kept = [entry_id for entry_id, _ in entries(client)]
        assert kept == ids[-length:]
    finally:
        client.close()


# --- from_url -------------------------------------------------------------------------------


def test_from_url_client_has_short_timeouts_and_no_retries() -> None:
    publisher = EventPublisher.from_url("redis://127.0.0.1:1/0", "s", 5, timeout_s=0.25)
    kwargs = publisher.redis.get_connection_kwargs()
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    assert publisher.redis.get_retry().get_retries() == 0
    assert (publisher.stream, publisher.maxlen) == ("s", 5)


def test_from_url_fails_fast_when_redis_is_down() -> None:
    publisher = EventPublisher.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    with pytest.raises(redis.ConnectionError):
        publisher.status(JOB, JobStatus.IN_PROGRESS)


# --- the sample run on real Redis ---------------------------------------------------------


@pytest.mark.redis_server
def test_sample_run_round_trips_through_real_redis(
    real_redis: redis.Redis, sample_entries: list[dict[str, str]]
) -> None:
    assert len(sample_entries) == 38
    publisher = EventPublisher(real_redis)
    ids = []
    for sample in sample_entries:
        if sample["type"] == "server.metrics":
            ids.append(publisher.server_metrics(sample["job_id"], json.loads(sample["metrics"])))
        elif sample["type"] == "client.metrics":
            ids.append(
                publisher.client_metrics(
                    sample["job_id"], sample["client_uuid"], json.loads(sample["metrics"])
                )
            )
        else:
            ids.append(
                publisher.status(sample["job_id"], sample["status"], sample.get("error_message"))
            )

    stored = entries(real_redis)
    assert [entry_id for entry_id, _ in stored] == ids
    for sample, (_, raw) in zip(sample_entries, stored, strict=True):
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        assert "sent_at" in fields
        del fields["sent_at"]
        expected = dict(sample)
        if "metrics" in expected:
            assert strict_loads(fields.pop("metrics")) == json.loads(expected.pop("metrics"))
        assert fields == expected
        assert parse_entry(raw).type == sample["type"]


# --- florist-worker emit -------------------------------------------------------------------


def run_emit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="florist-worker")
    emit.register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["emit", *argv])
    code = arguments.handler(arguments)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def emit_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, real_redis: redis.Redis) -> str:
    monkeypatch.setenv("FLORIST_REDIS_URL", redis_url)
    monkeypatch.delenv("FLORIST_STREAM", raising=False)
    return redis_url


@pytest.mark.redis_server
def test_emit_server_metrics(
    emit_env: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_emit(
        ["server-metrics", "--job", JOB, "--metrics", '{"fit_start": "t", "loss": NaN}'], capsys
    )
    assert (code, err) == (0, "")
    [(entry_id, fields)] = entries(real_redis)
    assert out == f"{entry_id}\n"
    event = parse_entry(fields)
    assert isinstance(event, ServerMetricsEvent)
    assert event.metrics == {"fit_start": "t", "loss": "NaN"}


@pytest.mark.redis_server
@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_emit_takes_each_event_type_as_the_stream_names_it(
    event_type: str, emit_env: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every type the wire format has is a kind `emit` accepts under that very name, and
    publishes what the hyphenated kind publishes."""
    options = {
        "server.metrics": ["--job", JOB, "--metrics", '{"a": 1}'],
        "client.metrics": ["--job", JOB, "--client-uuid", CLIENT, "--metrics", '{"a": 1}'],
        "job.status": ["--job", JOB, "--status", "IN_PROGRESS"],
    }.get(event_type)
    if options is None:  # a type emit does not publish (heartbeats come from reporters)
        assert event_type not in emit.KIND_ALIASES
        return
    canonical = emit.KIND_ALIASES[event_type]
    assert run_emit([event_type, *options], capsys)[0] == 0
    assert run_emit([canonical, *options], capsys)[0] == 0
    by_type, by_kind = (parse_entry(fields) for _, fields in entries(real_redis))
    assert by_type.type == by_kind.type == event_type
    assert by_type.model_dump(exclude={"sent_at"}) == by_kind.model_dump(exclude={"sent_at"})


@pytest.mark.redis_server
def test_emit_client_metrics_and_status(
    emit_env: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run_emit(
        ["client-metrics", "--job", JOB, "--client-uuid", CLIENT, "--metrics", '{"a": 1}'], capsys
    )
    assert code == 0
    code, _, _ = run_emit(
        ["status", "--job", JOB, "--status", "FINISHED_WITH_ERROR", "--error-message", "boom"],
        capsys,
    )
    assert code == 0
    client_event, status_event = (parse_entry(fields) for _, fields in entries(real_redis))
    assert isinstance(client_event, ClientMetricsEvent)
    assert (client_event.client_uuid, client_event.metrics) == (CLIENT, {"a": 1})
    assert isinstance(status_event, JobStatusEvent)
    assert status_event.status is JobStatus.FINISHED_WITH_ERROR
    assert status_event.error_message == "boom"


@pytest.mark.redis_server
def test_emit_stream_flag_and_env(
    emit_env: str,
    real_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, _ = run_emit(
        ["status", "--job", JOB, "--status", "IN_PROGRESS", "--stream", "a"], capsys
    )
    assert code == 0
    monkeypatch.setenv("FLORIST_STREAM", "b")
    code, _, _ = run_emit(["status", "--job", JOB, "--status", "IN_PROGRESS"], capsys)
    assert code == 0
    assert (real_redis.xlen("a"), real_redis.xlen("b"), real_redis.exists(STREAM)) == (1, 1, 0)


@pytest.mark.redis_server
def test_emit_redis_url_flag_wins(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    real_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLORIST_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, _, _ = run_emit(
        ["status", "--job", JOB, "--status", "IN_PROGRESS", "--redis-url", redis_url], capsys
    )
    assert code == 0
    assert real_redis.xlen(STREAM) == 1


@pytest.mark.redis_server
def test_emit_metrics_from_stdin(
    emit_env: str,
    real_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))
    code, _, _ = run_emit(["server-metrics", "--job", JOB, "--metrics", "-"], capsys)
    assert code == 0
    [(_, fields)] = entries(real_redis)
    assert json.loads(fields[b"metrics"]) == {"from": "stdin"}


@pytest.mark.redis_server
def test_emit_raw_fields(
    emit_env: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run_emit(["raw", "--fields", '{"v": "1", "type": "bogus"}'], capsys)
    assert code == 0
    [(_, fields)] = entries(real_redis)
    assert fields == {b"v": b"1", b"type": b"bogus"}


@pytest.mark.redis_server
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server-metrics", "--job", JOB, "--metrics", "{not json"], "--metrics is not valid JSON"),
        (
            ["server-metrics", "--job", JOB, "--metrics", "[1]"],
            "must be a JSON object, got an array",
        ),
        (["client-metrics", "--job", JOB, "--client-uuid", CLIENT, "--metrics", "1"], "a number"),
        (["client-metrics", "--job", JOB, "--client-uuid", "", "--metrics", "{}"], "client_uuid"),
        (["server-metrics", "--job", "", "--metrics", "{}"], "job_id"),
        (["status", "--job", JOB, "--status", "DONE"], "unknown status 'DONE'"),
        (["raw", "--fields", '{"v": 1}'], "must be JSON strings"),
        (["status", "--job", JOB, "--status", "IN_PROGRESS", "--maxlen", "0"], "--maxlen"),
    ],
)
def test_emit_bad_input_exits_2_and_writes_nothing(
    emit_env: str,
    real_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code, out, err = run_emit(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("florist-worker emit: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert real_redis.keys("*") == []


def test_emit_redis_down_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLORIST_REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("FLORIST_SOCKET_TIMEOUT_S", "0.3")
    monkeypatch.setenv("FLORIST_BLOCK_MS", "100")
    code, out, err = run_emit(["status", "--job", JOB, "--status", "IN_PROGRESS"], capsys)
    assert code == 1
    assert out == ""
    assert "cannot publish: Redis redis://:***@127.0.0.1:" in err and "did not answer" in err
    assert "secret" not in err
    assert err.count("\n") == 1


def test_emit_bad_setting_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLORIST_SOCKET_TIMEOUT_S", "soon")
    code, _, err = run_emit(["status", "--job", JOB, "--status", "IN_PROGRESS"], capsys)
    assert code == 2
    assert err.startswith("florist-worker emit: error: invalid settings: socket_timeout_s")
    assert err.count("\n") == 1


def test_emit_help_lists_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="florist-worker")
    emit.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["emit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for kind in ("server-metrics", "client-metrics", "status", "raw"):
        assert kind in out


# --- FLORIST_STREAM: the publisher and the worker read the same variable (issue 11) ----------


def test_publisher_and_worker_meet_on_florist_stream(
    monkeypatch: pytest.MonkeyPatch, database: Any, job_document: dict[str, Any], tmp_path: Any
) -> None:
    from worker.consumer import Worker
    from worker.settings import Settings

    monkeypatch.setenv("FLORIST_STREAM", "custom:events")
    client = isolated_fake()
    publisher = EventPublisher(client)  # no stream given: FLORIST_STREAM
    assert publisher.stream == "custom:events"
    database["job"].insert_one(job_document)
    publisher.status(job_document["_id"], JobStatus.IN_PROGRESS)

    worker = Worker(client, database, Settings(consumer="t", heartbeat_file=tmp_path / "hb"))
    assert worker.drain() == {"applied": 1}
    assert database["job"].find_one({"_id": job_document["_id"]})["status"] == "IN_PROGRESS"
    assert not client.exists(STREAM)


def test_the_reporter_s_drop_in_form_reads_florist_stream_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.producer import StreamMetricsReporter

    monkeypatch.setenv("FLORIST_STREAM", "custom:events")
    reporter = StreamMetricsReporter(host="localhost", port="6379", run_id=CLIENT)
    assert reporter.publisher.stream == "custom:events"
    monkeypatch.delenv("FLORIST_STREAM")
    assert StreamMetricsReporter(host="h", port=1).publisher.stream == STREAM
