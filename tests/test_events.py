"""The v1 wire format: parsing, errors, round trip, schema; positions as integer pairs."""

from __future__ import annotations

import json

import pytest
from florist_events import InvalidEvent, check_entry
from hypothesis import given
from hypothesis import strategies as st

from worker.events import (
    ClientMetricsEvent,
    InvalidEntry,
    JobStatusEvent,
    Limits,
    ServerMetricsEvent,
    entry_json_schema,
    parse_entry,
    to_fields,
)
from worker.jsontext import dumps_strict, nesting_depth
from worker.positions import InvalidStreamId, StreamPosition


def test_every_sample_parses_and_round_trips(sample_entries):
    for fields in sample_entries:
        raw = {k.encode(): v.encode() for k, v in fields.items()}
        event = parse_entry(raw)
        assert event.type == fields["type"]
        assert parse_entry(to_fields(event)) == event


def test_types_and_fields():
    server = parse_entry(
        {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": '{"fit_end": 1}'}
    )
    assert isinstance(server, ServerMetricsEvent) and server.finishes_job
    client = parse_entry(
        {"v": "1", "type": "client.metrics", "job_id": "j", "client_uuid": "u", "metrics": "{}"}
    )
    assert isinstance(client, ClientMetricsEvent) and client.client_uuid == "u"
    status = parse_entry(
        {
            "v": "1",
            "type": "job.status",
            "job_id": "j",
            "status": "FINISHED_WITH_ERROR",
            "error_message": "boom",
            "unknown_extra": "ignored",
        }
    )
    assert isinstance(status, JobStatusEvent) and status.error_message == "boom"


@pytest.mark.parametrize(
    ("fields", "outcome", "message"),
    [
        ({}, "invalid", "missing field 'v'"),
        ({"v": "1"}, "invalid", "missing field 'type'"),
        ({"v": "x", "type": "job.status"}, "invalid", "field 'v' must be '1'"),
        ({"v": "3", "type": "job.status"}, "unsupported_version", "schema version 3"),
        ({"v": "1", "type": "x.y"}, "invalid", "unknown type 'x.y'"),
        ({"v": "1", "type": "job.status", "job_id": "j"}, "invalid", "missing field 'status'"),
        (
            {"v": "1", "type": "job.status", "job_id": "j", "status": "DONE"},
            "invalid",
            "unknown status 'DONE'",
        ),
        (
            {"v": "1", "type": "client.metrics", "job_id": "j", "metrics": "{}"},
            "invalid",
            "missing field 'client_uuid'",
        ),
        (
            {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "{"},
            "invalid",
            "not valid JSON",
        ),
        (
            {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "3"},
            "invalid",
            "got a number",
        ),
        (
            {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "null"},
            "invalid",
            "got null",
        ),
        (
            {"v": "1", "type": "server.metrics", "job_id": 5, "metrics": "{}"},
            "invalid",
            "'job_id' must be text",
        ),
        ({b"v": b"1", b"type": b"\xc3"}, "invalid", "not UTF-8"),
    ],
)
def test_each_kind_of_bad_entry_has_a_specific_message(fields, outcome, message):
    with pytest.raises(InvalidEntry) as caught:
        parse_entry(fields)
    assert caught.value.outcome == outcome
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("version", "outcome"),
    [
        ("2", "unsupported_version"),
        ("02", "unsupported_version"),
        ("9" * 18, "unsupported_version"),
        ("9" * 19, "unsupported_version"),
        ("1" + "0" * 30, "unsupported_version"),
        ("7" * 5000, "unsupported_version"),  # more digits than int() takes
        ("0", "invalid"),
        ("01", "invalid"),  # version 1 spelled otherwise
        ("0" * 25, "invalid"),
        ("\u00b2", "invalid"),  # a digit, but not an ASCII one
        ("1" * 20 + "\u0663", "invalid"),
        ("2\n", "invalid"),
        ("-2", "invalid"),
    ],
)
def test_a_version_of_ascii_digits_of_any_length_after_1_is_unsupported(version, outcome):
    fields = {"v": version, "type": "job.status", "job_id": "j", "status": "IN_PROGRESS"}
    with pytest.raises(InvalidEntry) as caught:
        parse_entry(fields)
    assert caught.value.outcome == outcome
    with pytest.raises(InvalidEvent) as refused:  # the producer files it the same way
        check_entry(fields)
    assert refused.value.outcome == outcome


def test_limits_are_configurable():
    fields = {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": '{"a": {"b": {}}}'}
    parse_entry(fields, Limits(max_metrics_depth=3))
    with pytest.raises(InvalidEntry, match="nested 3 levels deep, over the limit of 2"):
        parse_entry(fields, Limits(max_metrics_depth=2))
    with pytest.raises(InvalidEntry, match="over the limit of 64"):
        parse_entry({**fields, "pad": "x" * 64}, Limits(max_entry_bytes=64))


def test_hostile_nesting_is_refused_without_crashing():
    with pytest.raises(InvalidEntry, match="nested too deeply"):
        parse_entry({"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "[" * 100_000})


def test_origin_id_is_the_position():
    event = parse_entry(
        {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "{}", "origin_id": "5-9"}
    )
    assert event.position("7-0") == StreamPosition(5, 9)
    plain = parse_entry({"v": "1", "type": "server.metrics", "job_id": "j", "metrics": "{}"})
    assert plain.position(b"7-1") == StreamPosition(7, 1)


def test_positions_compare_as_integer_pairs_and_keys_sort_the_same_way():
    ids = ["5-9", "5-10", "10-0", "9-99", "0-1", "18446744073709551615-18446744073709551615"]
    positions = [StreamPosition.parse(i) for i in ids]
    ordered = sorted(positions)
    assert [str(p) for p in ordered] == [
        "0-1",
        "5-9",
        "5-10",
        "9-99",
        "10-0",
        "18446744073709551615-18446744073709551615",
    ]
    assert sorted(p.key for p in positions) == [p.key for p in ordered]


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
def test_key_order_equals_pair_order(a, b, c, d):
    left, right = StreamPosition(a, b), StreamPosition(c, d)
    assert (left < right) == (left.key < right.key)


@pytest.mark.parametrize("text", ["5", "5-", "-1", "a-b", "5-10-1", "18446744073709551616-0", ""])
def test_malformed_ids_are_refused(text):
    with pytest.raises(InvalidStreamId):
        StreamPosition.parse(text)


def test_strict_json_text():
    text = dumps_strict({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": 1.5})
    assert json.loads(text) == {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": 1.5}
    assert "NaN," not in text and ": NaN" not in text
    assert nesting_depth({"a": [{"b": 1}]}) == 3 and nesting_depth(1) == 0


def test_json_schema_describes_the_three_types():
    schema = entry_json_schema()
    text = json.dumps(schema)
    for name in ("server.metrics", "client.metrics", "job.status", "FINISHED_WITH_ERROR"):
        assert name in text
    assert schema["discriminator"]["propertyName"] == "type"
