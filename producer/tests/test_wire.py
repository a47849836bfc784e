"""florist_events.wire: names, limits, check_entry and the builders."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from typing import Any

import pytest

import florist_events
from florist_events import (
    InvalidEvent,
    Limits,
    check_entry,
    client_metrics_fields,
    server_metrics_fields,
    status_fields,
    stream_from_env,
)
from florist_events.jsontext import dumps_compatible, dumps_strict, jsonable, nesting_depth

JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
SERVER = "d73243cf-8b89-473b-9607-8cd0253a101d"
CLIENT = "0c316680-1375-4e07-84c3-a732a2e6d03f"


def test_runs_on_a_supported_python() -> None:
    assert sys.version_info >= (3, 10)


def test_the_names_of_the_wire_format() -> None:
    assert florist_events.SCHEMA_VERSION == 1
    assert florist_events.EVENT_TYPES == (
        "server.metrics",
        "client.metrics",
        "job.status",
        "host.heartbeat",
    )
    assert florist_events.JOB_STATUSES == (
        "NOT_STARTED",
        "IN_PROGRESS",
        "FINISHED_WITH_ERROR",
        "FINISHED_SUCCESSFULLY",
    )
    assert florist_events.DEFAULT_STREAM == "florist:events"
    assert florist_events.DEFAULT_MAXLEN == 1_000_000
    assert florist_events.DEFAULT_MAX_ENTRY_BYTES == 1024 * 1024
    assert florist_events.DEFAULT_MAX_METRICS_DEPTH == 32
    assert florist_events.FIELD_SERVER_UUID == "server_uuid"
    assert florist_events.FIELD_CLIENT_UUID == "client_uuid"
    assert florist_events.FIELD_JOB_ID == "job_id"
    assert Limits() == Limits(1024 * 1024, 32)


def test_stream_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stream_from_env() == "florist:events"
    monkeypatch.setenv("FLORIST_STREAM", "")
    assert stream_from_env() == "florist:events"
    monkeypatch.setenv("FLORIST_STREAM", "elsewhere")
    assert stream_from_env() == "elsewhere"
    assert stream_from_env("given") == "given"


# --- check_entry ----------------------------------------------------------------------------


def entry(**fields: str) -> dict[str, str]:
    return {"v": "1", **fields}


VALID = [
    entry(type="server.metrics", job_id=JOB, metrics="{}"),
    entry(type="server.metrics", server_uuid=SERVER, metrics='{"a": [1, {"b": NaN}]}'),
    entry(type="server.metrics", job_id=JOB, server_uuid=SERVER, metrics="{}"),
    entry(type="client.metrics", job_id=JOB, client_uuid=CLIENT, metrics="{}"),
    entry(type="client.metrics", client_uuid=CLIENT, metrics="{}"),
    entry(type="job.status", job_id=JOB, status="IN_PROGRESS"),
    entry(type="job.status", server_uuid=SERVER, status="FINISHED_WITH_ERROR", error_message=""),
    entry(type="job.status", job_id=JOB, status="NOT_STARTED", sent_at="", extra="ignored"),
    entry(type="job.status", job_id=JOB, status="IN_PROGRESS", origin_id="1700000000000-0"),
]


@pytest.mark.parametrize("fields", VALID)
def test_check_entry_accepts(fields: dict[str, str]) -> None:
    assert check_entry(fields) == fields
    as_bytes = {key.encode(): value.encode() for key, value in fields.items()}
    assert check_entry(as_bytes) == fields


INVALID = [
    (entry(type="job.status", status="IN_PROGRESS"), "'job_id' or 'server_uuid'", "invalid"),
    (entry(type="server.metrics", metrics="{}"), "'job_id' or 'server_uuid'", "invalid"),
    (entry(type="client.metrics", job_id=JOB, metrics="{}"), "'client_uuid'", "invalid"),
    (entry(type="client.metrics", client_uuid="", metrics="{}"), "must not be empty", "invalid"),
    (entry(type="job.status", job_id="", status="IN_PROGRESS"), "must not be empty", "invalid"),
    (
        entry(type="job.status", job_id="", server_uuid=SERVER, status="IN_PROGRESS"),
        "'job_id' must not be empty",
        "invalid",
    ),
    (
        entry(type="job.status", server_uuid="", status="IN_PROGRESS"),
        "'server_uuid' must not be empty",
        "invalid",
    ),
    (entry(type="job.status", job_id=JOB), "missing field 'status'", "invalid"),
    (entry(type="job.status", job_id=JOB, status="DONE"), "unknown status 'DONE'", "invalid"),
    (entry(type="server.metrics", job_id=JOB), "missing field 'metrics'", "invalid"),
    (entry(type="server.metrics", job_id=JOB, metrics="{"), "not valid JSON", "invalid"),
    (entry(type="server.metrics", job_id=JOB, metrics="[]"), "got an array", "invalid"),
    (entry(type="server.metrics", job_id=JOB, metrics='"x"'), "got a string", "invalid"),
    (entry(type="server.metrics", job_id=JOB, metrics="null"), "got null", "invalid"),
    (entry(type="server.metrics", job_id=JOB, metrics="1"), "got a number", "invalid"),
    (entry(type="no.such", job_id=JOB), "unknown type 'no.such'", "invalid"),
    (
        {"type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"},
        "missing field 'v'",
        "invalid",
    ),
    (entry(job_id=JOB), "missing field 'type'", "invalid"),
    ({"v": "2", "type": "job.status"}, "newer than", "unsupported_version"),
    ({"v": "9" * 19, "type": "job.status"}, "newer than", "unsupported_version"),
    ({"v": "3" * 5000, "type": "job.status"}, "newer than", "unsupported_version"),
    ({"v": "01", "type": "job.status"}, "must be '1'", "invalid"),
    ({"v": "0", "type": "job.status"}, "must be '1'", "invalid"),
    ({"v": "\u00b2", "type": "job.status"}, "must be '1'", "invalid"),  # a digit, not ASCII
    (
        entry(type="job.status", job_id=JOB, status="IN_PROGRESS", origin_id="5"),
        "origin_id",
        "invalid",
    ),
    (
        entry(type="job.status", job_id=JOB, status="IN_PROGRESS", origin_id=f"{2**64}-0"),
        "out of range",
        "invalid",
    ),
]


@pytest.mark.parametrize(("fields", "message", "outcome"), INVALID)
def test_check_entry_refuses(fields: dict[str, str], message: str, outcome: str) -> None:
    with pytest.raises(InvalidEvent, match=message) as raised:
        check_entry(fields)
    assert raised.value.outcome == outcome


def test_check_entry_refuses_what_is_not_text() -> None:
    with pytest.raises(InvalidEvent, match="not UTF-8"):
        check_entry({b"v": b"1", b"type": b"job.status", b"job_id": b"\xff"})
    with pytest.raises(InvalidEvent, match="must be text, got int"):
        check_entry({"v": "1", "type": "job.status", "job_id": 3})
    with pytest.raises(InvalidEvent, match="field map"):
        check_entry([("v", "1")])  # type: ignore[arg-type]


def test_check_entry_limits() -> None:
    deep = entry(type="server.metrics", job_id=JOB, metrics='{"a": {"b": {"c": {}}}}')
    check_entry(deep, Limits(max_metrics_depth=4))
    with pytest.raises(InvalidEvent, match="nested 4 levels deep, over the limit of 3"):
        check_entry(deep, Limits(max_metrics_depth=3))
    big = entry(type="server.metrics", job_id=JOB, metrics=json.dumps({"x": "é" * 100}))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in big.items())
    check_entry(big, Limits(max_entry_bytes=size))
    with pytest.raises(InvalidEvent, match=f"entry is {size} bytes, over the limit of {size - 1}"):
        check_entry(big, Limits(max_entry_bytes=size - 1))
    with pytest.raises(InvalidEvent, match="too deeply to parse"):
        check_entry(entry(type="server.metrics", job_id=JOB, metrics="[" * 100_000))


# --- builders -------------------------------------------------------------------------------


def test_builders_write_v_and_sent_at() -> None:
    fields = server_metrics_fields({"a": 1}, job_id=JOB)
    assert fields["v"] == "1"
    sent_at = dt.datetime.fromisoformat(fields.pop("sent_at"))
    assert sent_at.utcoffset() == dt.timedelta(0)
    assert fields == {"v": "1", "type": "server.metrics", "job_id": JOB, "metrics": '{"a":1}'}


def test_builders_by_uuid() -> None:
    assert server_metrics_fields({}, server_uuid=SERVER, sent_at="t") == {
        "v": "1",
        "type": "server.metrics",
        "server_uuid": SERVER,
        "metrics": "{}",
        "sent_at": "t",
    }
    client = client_metrics_fields({}, client_uuid=CLIENT, sent_at="t")
    assert client == {
        "v": "1",
        "type": "client.metrics",
        "client_uuid": CLIENT,
        "metrics": "{}",
        "sent_at": "t",
    }
    status = status_fields("IN_PROGRESS", server_uuid=SERVER, sent_at="t")
    assert status["server_uuid"] == SERVER and "job_id" not in status
    for fields in (client, status):
        assert check_entry(fields) == fields


def test_status_takes_any_enum_member() -> None:
    import enum

    class Status(enum.Enum):
        DONE = "FINISHED_SUCCESSFULLY"

    assert status_fields(Status.DONE, job_id=JOB)["status"] == "FINISHED_SUCCESSFULLY"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: server_metrics_fields({}), "'job_id' or 'server_uuid'"),
        (lambda: server_metrics_fields({}, job_id=""), "'job_id' must not be empty"),
        (lambda: server_metrics_fields({}, server_uuid=7), "'server_uuid' must be text"),
        (lambda: client_metrics_fields({}, client_uuid=None), "client_uuid"),  # type: ignore[arg-type]
        (lambda: status_fields("DONE", job_id=JOB), "unknown status 'DONE'"),
        (lambda: status_fields(None, job_id=JOB), "unknown status None"),
        (lambda: status_fields("IN_PROGRESS"), "'job_id' or 'server_uuid'"),
        (lambda: server_metrics_fields([], job_id=JOB), "metrics must be a dict"),  # type: ignore[arg-type]
        (lambda: server_metrics_fields({"a": {1: 2}}, job_id=JOB), "keys must be text"),
        (lambda: server_metrics_fields({"a": object()}, job_id=JOB), "not JSON serializable"),
    ],
)
def test_builders_refuse(build: Any, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        build()


def test_builders_refuse_a_circular_snapshot_without_hanging() -> None:
    looped: dict[str, Any] = {"a": [1]}
    looped["a"].append(looped)
    with pytest.raises(InvalidEvent, match="circular"):
        server_metrics_fields(looped, job_id=JOB)
    shared = {"x": 1}
    fields = server_metrics_fields({"a": shared, "b": [shared]}, job_id=JOB)  # not a cycle
    assert json.loads(fields["metrics"]) == {"a": {"x": 1}, "b": [{"x": 1}]}


def test_builders_check_depth_and_size() -> None:
    limits = Limits(max_entry_bytes=200, max_metrics_depth=3)
    server_metrics_fields({"a": {"b": [1]}}, job_id=JOB, limits=limits)
    with pytest.raises(InvalidEvent, match="nested 4 levels deep, over the limit of 3"):
        server_metrics_fields({"a": {"b": [(1,)]}}, job_id=JOB, limits=limits)
    with pytest.raises(InvalidEvent, match="over the limit of 200"):
        server_metrics_fields({"blob": "x" * 200}, job_id=JOB, limits=limits)


# --- JSON text ------------------------------------------------------------------------------


def test_dumps_strict_and_compatible() -> None:
    value = {"loss": math.nan, "best": math.inf, "worst": -math.inf, "name": "é", "r": [1.5]}
    assert dumps_strict(value) == (
        '{"loss":"NaN","best":"Infinity","worst":"-Infinity","name":"é","r":[1.5]}'
    )
    assert dumps_compatible(value) == (
        '{"loss": "NaN", "best": "Infinity", "worst": "-Infinity", "name": "\\u00e9", "r": [1.5]}'
    )
    finite = {"a": [1, 2.5, None, True], "b": {"c": "d"}, "é": "x"}
    assert dumps_compatible(finite) == json.dumps(finite)
    assert dumps_compatible([{"m": 1}]) == json.dumps([{"m": 1}])


def test_nesting_depth() -> None:
    assert nesting_depth(1) == 0
    assert nesting_depth({}) == 1
    assert nesting_depth({"a": [{}]}) == 3
    assert nesting_depth({"a": (1, (2,))}) == 3
    assert nesting_depth({"a": {"b": {"c": {}}}}, stop_after=2) == 3


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
    moment = dt.datetime(2024, 11, 20, 14, 0, 0, 100000)
    assert jsonable({"t": moment, "k": (1, 2)}) == {"t": str(moment), "k": [1, 2]}
    assert jsonable({True: 1, None: 2, 1.5: 3}) == {"true": 1, "null": 2, "1.5": 3}


def test_lone_surrogates() -> None:
    # In metrics (a file name decoded with surrogateescape): escaped, so the text is UTF-8.
    fields = server_metrics_fields({"path": "data/\udcff"}, job_id=JOB)
    assert fields["metrics"] == '{"path":"data/\\udcff"}'
    fields["metrics"].encode("utf-8")
    assert check_entry(fields) == fields
    assert dumps_strict({"a": "é"}) == '{"a":"é"}'  # other characters stay as they are
    # In a name: the worker could not read it back, so it is refused.
    with pytest.raises(InvalidEvent, match="'client_uuid' is not valid UTF-8"):
        client_metrics_fields({}, client_uuid="c\udcff")
