"""The fast path of :func:`worker.events.parse_entry` agrees exactly with pydantic's.

Correctly written entries skip pydantic's validation (``worker.events._fast_event``);
anything the fast path is not sure of goes to the models. These tests feed both paths
the real samples, mutations of them (fields dropped, hostile values, extra fields, the
type changed under the fields of another) and arbitrary field maps, and require the
same result: the same ``InvalidEntry`` outcome and message, or events equal in every
respect (fields in order, fields set, the stored metrics text, identity, position).
They also check that the fast path is taken at all, and that planning's one-pass
coalescing matches :func:`worker.effects.may_be_coalesced`.

``FLORIST_FUZZ_SCALE=N`` multiplies the example budgets (``./dev fuzz`` sets it).
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import load_sample_entries
from worker import events
from worker.batch import plan_batch
from worker.effects import coalesce_target, may_be_coalesced
from worker.events import InvalidEntry, Limits, parse_entry, to_fields
from worker.stream import Entry

SCALE = int(os.environ.get("FLORIST_FUZZ_SCALE", "1"))
SAMPLES = load_sample_entries()
HEARTBEATS = [
    {"v": "1", "type": "host.heartbeat", "host_type": "server", "job_id": "j-1"},
    {"v": "1", "type": "host.heartbeat", "host_type": "server", "server_uuid": "s-1"},
    {"v": "1", "type": "host.heartbeat", "host_type": "client", "client_uuid": "c-1"},
    {
        "v": "1",
        "type": "host.heartbeat",
        "host_type": "client",
        "client_uuid": "c-1",
        "job_id": "j-1",
        "server_uuid": "",
    },
]
EXTRA_VALID = [
    {"v": "1", "type": "server.metrics", "server_uuid": "s-1", "metrics": '{"fit_end": 1}'},
    {"v": "1", "type": "job.status", "server_uuid": "s-1", "status": "FINISHED_WITH_ERROR"},
    {
        "v": "1",
        "type": "job.status",
        "job_id": "j",
        "status": "FINISHED_WITH_ERROR",
        "error_message": "",
        "sent_at": "",
        "requeue_token": "t",
        "origin_id": "5-1",
    },
    {"v": "1", "type": "client.metrics", "client_uuid": "c", "metrics": '{"a": NaN}'},
]
BASES = [*SAMPLES[:4], SAMPLES[-1], *HEARTBEATS, *EXTRA_VALID]
LIMITS = [Limits(), Limits(max_entry_bytes=2048, max_metrics_depth=3)]

FIELD_NAMES = [
    *("v", "type", "job_id", "client_uuid", "server_uuid", "metrics", "status"),
    *("error_message", "host_type", "origin_id", "requeue_token", "sent_at", "x", ""),
]
HOSTILE_TEXT = [
    *("", " ", "1", "2", "01", "²", "1²", "٣", "\uff11", "1\n", " 1", "-1", "0"),
    *("99999999999999999999", "x" * 300, "\x00", "None", "null", "true"),
    *("1-0", "0-1", "5-10", "18446744073709551615-18446744073709551615", "18446744073709551616-0"),
    *("1-99999999999999999999999", "١٢-٣", "1-²", "5-", "-5", "5-1-1", "a-b"),
    *("server", "client", "Server", "server ", "job.status", "server.metrics"),
    *("client.metrics", "host.heartbeat", "x.y"),
    *("NOT_STARTED", "IN_PROGRESS", "FINISHED_WITH_ERROR", "FINISHED_SUCCESSFULLY"),
    *("in_progress", "JobStatus.IN_PROGRESS", "DONE"),
]
HOSTILE_METRICS = [
    *("{}", '{"a": 1}', '{"fit_end": "t"}', '{"a": NaN}', '{"a": Infinity, "b": -Infinity}'),
    *('{"a": "NaN"}', '{"a": nan}', '{"a": 1e400}', '{"a": -1e999}', '{"a": ' + "9" * 400 + "}"),
    *('{"a": "\\ud800"}', '{"\\udc00": 1}', '{"a": 1} x', '{"a":1,"a":2}', "[1]", '"s"', "3"),
    *("null", "", "{", '{"a": {"b": {"c": {}}}}', '{"a": [[[[1]]]]}', "{" * 40 + "}" * 40),
    *('{"a":' * 40 + "1" + "}" * 40, "[" * 3000 + "]" * 3000, '{"a": "\\u0000"}'),
]
text_values = st.one_of(
    st.sampled_from(HOSTILE_TEXT), st.sampled_from(HOSTILE_METRICS), st.text(max_size=10)
)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8


byte_values = st.one_of(
    text_values.map(_utf8),
    st.binary(max_size=10),
    st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"1\xff", b"x" * 3000]),
)
# Values a caller's own map may hold (the worker only ever sees bytes).
odd_values = st.one_of(
    st.none(), st.integers(), st.floats(), st.booleans(), st.just([]), st.just({})
)
names = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6))


@st.composite
def near_valid(draw: st.DrawFn) -> dict[bytes, bytes]:
    """A valid entry, then a few mutations of it."""
    fields: dict[str, Any] = dict(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["drop", "set", "extra", "retype", "origin"]))
        if how == "drop" and fields:
            fields.pop(draw(st.sampled_from(sorted(fields))))
        elif how == "set":
            fields[draw(st.sampled_from(FIELD_NAMES))] = draw(text_values)
        elif how == "extra":
            fields[draw(names)] = draw(text_values)
        elif how == "retype":
            fields["type"] = draw(st.sampled_from(events.EVENT_TYPES))
        else:
            fields["origin_id"] = draw(st.sampled_from(["1-0", "0-0", "7-3", "x", ""]))
            if draw(st.booleans()):
                fields["requeue_token"] = draw(text_values)
    raw = {_utf8(key): _utf8(value) for key, value in fields.items()}
    if draw(st.booleans()):  # a byte-level blow: invalid UTF-8 and the like
        raw[_utf8(draw(st.sampled_from(FIELD_NAMES)))] = draw(byte_values)
    return raw


arbitrary = st.dictionaries(names.map(_utf8), byte_values, max_size=8)
as_text = near_valid().map(
    lambda raw: {
        key.decode(errors="replace"): value.decode(errors="replace") for key, value in raw.items()
    }
)


@st.composite
def odd_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A caller's map with a value that is not text: pydantic words the error."""
    fields: dict[Any, Any] = dict(draw(st.sampled_from(BASES)))
    fields[draw(st.sampled_from(FIELD_NAMES))] = draw(odd_values)
    return fields


def _slow(fields: Any, limits: Limits) -> Any:
    """``parse_entry`` with the fast path switched off: pydantic decides everything."""
    with mock.patch.object(events, "_fast_event", lambda *_args: None):
        return _outcome(fields, limits)


def _outcome(fields: Any, limits: Limits) -> Any:
    try:
        return parse_entry(fields, limits)
    except InvalidEntry as error:
        return ("InvalidEntry", error.outcome, error.message)
    except Exception as error:  # noqa: BLE001 (the paths must fail alike, too)
        return (type(error).__name__, str(error))


def _anatomy(event: Any) -> dict[str, Any]:
    """Everything that makes an event what it is, as comparable values."""
    metrics_text = getattr(event, "metrics_text", None)
    return {
        "type": type(event),
        "dict": repr(list(event.__dict__.items())),  # repr: NaN equals itself there
        "fields_set": event.__pydantic_fields_set__,
        "extra": event.__pydantic_extra__,
        "private": event.__pydantic_private__,
        "metrics_text": metrics_text,
        "identity": event.identity,
        "position": event.position("1700000000000-5"),
        "dump": repr(event.model_dump()),
        "dump_set": repr(event.model_dump(exclude_unset=True)),
        "to_fields": to_fields(event),
        "repr": repr(event),
        "with_job": _with_job(event),
    }


def _with_job(event: Any) -> tuple[str, set[str]]:
    """The event resolved to another job (``model_copy``): its fields and fields set."""
    moved = event.with_job("another-job")
    return repr(list(moved.__dict__.items())), moved.model_fields_set


def assert_same(fields: Any, limits: Limits) -> None:
    fast, slow = _outcome(fields, limits), _slow(fields, limits)
    if isinstance(slow, tuple) or isinstance(fast, tuple):
        assert fast == slow
        return
    assert _anatomy(fast) == _anatomy(slow)


BUDGET = hsettings(
    max_examples=400 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@BUDGET
@given(fields=near_valid(), limits=st.sampled_from(LIMITS))
def test_near_valid_entries_agree(fields, limits):
    assert_same(fields, limits)


@BUDGET
@given(fields=arbitrary, limits=st.sampled_from(LIMITS))
def test_arbitrary_field_maps_agree(fields, limits):
    assert_same(fields, limits)


@BUDGET
@given(fields=st.one_of(as_text, odd_maps()), limits=st.sampled_from(LIMITS))
def test_callers_own_maps_agree(fields, limits):
    assert_same(fields, limits)


@pytest.mark.parametrize("limits", LIMITS)
def test_every_single_change_of_a_valid_entry_agrees(limits):
    """Each valid entry with each field dropped, or set to each hostile value."""
    checked = 0
    for base in BASES:
        raw = {_utf8(key): _utf8(value) for key, value in base.items()}
        for name in map(_utf8, FIELD_NAMES):
            assert_same({key: value for key, value in raw.items() if key != name}, limits)
            for value in [*map(_utf8, HOSTILE_TEXT + HOSTILE_METRICS), b"\xff", b"1\xed\xa0\x80"]:
                assert_same({**raw, name: value}, limits)
                checked += 1
    assert checked > 10_000


@pytest.mark.parametrize("fields", BASES, ids=lambda fields: str(fields.get("type")))
def test_valid_entries_take_the_fast_path_and_agree(fields):
    raw = {key.encode(): value.encode() for key, value in fields.items()}
    assert events._fast_event(*_fast_arguments(raw)) is not None
    event = parse_entry(raw)
    assert_same(raw, Limits())
    assert to_fields(parse_entry(to_fields(event))) == to_fields(event)


def _fast_arguments(raw: dict[bytes, bytes]) -> tuple[str, dict[str, Any], str | None]:
    decoded = {key.decode(): value.decode() for key, value in raw.items()}
    stored = None
    if decoded["type"] in events.METRICS_TYPES:
        decoded["metrics"], stored = events.parse_metrics_text(decoded["metrics"], 64)
    return decoded["type"], decoded, stored


UNREQUEUED = [fields for fields in BASES if "origin_id" not in fields]


@BUDGET
@given(batch=st.lists(st.sampled_from(UNREQUEUED), max_size=20))
def test_one_pass_coalescing_matches_may_be_coalesced(batch):
    entries = [
        Entry(f"{10 + index}-0", {key.encode(): value.encode() for key, value in fields.items()})
        for index, fields in enumerate(batch)
    ]
    planned = plan_batch(entries, Limits())
    newest: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(planned):
        if item.event is not None:
            key = coalesce_target(item.event)
            if key is not None:
                newest[key] = index
    for index, item in enumerate(planned):
        assert item.event is not None
        superseded = may_be_coalesced(item.event) and newest[coalesce_target(item.event)] > index
        assert item.outcome is None
        assert bool(item.coalesced_into) == superseded
        if superseded:
            assert item.coalesced_into == planned[newest[coalesce_target(item.event)]].entry.id
