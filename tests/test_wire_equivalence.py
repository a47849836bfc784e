"""One wire format: the producer's checks (florist_events) and the worker's parse agree.

florist_events cannot import the worker (it installs where pydantic 1 lives), so it
carries its own checks of an entry. These properties hold them to the worker's
``parse_entry``: over generated entries (valid ones, and ones broken in every way the
fields can be), the producer's ``check_entry`` accepts exactly what the worker accepts, and
whatever the producer's builders and ``EventPublisher`` write, the worker accepts.
"""

from __future__ import annotations

import json
import math
from typing import Any

import fakeredis
import florist_events
import pytest
from florist_events import EventPublisher, InvalidEvent, check_entry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.entities import JobStatus
from worker.events import EVENT_TYPES, SCHEMA_VERSION, InvalidEntry, parse_entry
from worker.events import Limits as WorkerLimits

# Small limits, so that generated entries cross them often.
SMALL = {"max_entry_bytes": 600, "max_metrics_depth": 4}
PRODUCER_LIMITS = florist_events.Limits(**SMALL)
WORKER_LIMITS = WorkerLimits(**SMALL)

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_names_are_the_worker_s() -> None:
    assert florist_events.SCHEMA_VERSION == SCHEMA_VERSION
    assert florist_events.EVENT_TYPES == EVENT_TYPES
    assert list(florist_events.JOB_STATUSES) == JobStatus.list()
    defaults = WorkerLimits()
    assert defaults.max_entry_bytes == florist_events.DEFAULT_MAX_ENTRY_BYTES
    assert defaults.max_metrics_depth == florist_events.DEFAULT_MAX_METRICS_DEPTH


def worker_verdict(fields: dict[bytes, bytes]) -> str | None:
    """None when the worker accepts the entry, else its outcome and message."""
    try:
        parse_entry(fields, WORKER_LIMITS)
    except InvalidEntry as error:
        return f"{error.outcome}: {error.message}"
    return None


def producer_verdict(fields: dict[bytes, bytes]) -> str | None:
    try:
        check_entry(fields, PRODUCER_LIMITS)
    except InvalidEvent as error:
        return f"{error.outcome}: {error.message}"
    return None


# --- generated entries --------------------------------------------------------------------

ids = st.one_of(
    st.sampled_from(["066de609-b04a-4b30-b46c-32537c7f1f6e", "j", " ", "", "a\udcff"]),
    st.text(max_size=12),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just("data/\udcff"),  # a lone surrogate (surrogateescape): escaped by the producer
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)
metrics_texts = st.one_of(
    st.builds(json.dumps, st.dictionaries(st.text(max_size=6), json_values, max_size=4)),
    st.builds(json.dumps, json_values),  # arrays, scalars: not an object
    st.sampled_from(
        [
            "{}",
            '{"a": NaN, "b": -Infinity}',
            '{"a": 1e400}',
            '{"a": "\\ud800"}',
            '{"a": {"b": {"c": {"d": {}}}}}',  # depth 5, over the small limit
            '{"a": {"b": {"c": {}}}}',  # depth 4, at it
            "{",
            "",
            "[" * 2000,
            '{"a": 1} x',
            '{"big": ' + "9" * 5000 + "}",  # over Python's integer digit limit
        ]
    ),
    st.text(max_size=20),
)
statuses = st.one_of(st.sampled_from([*JobStatus.list(), "DONE", "", "in_progress"]), st.text())
versions = st.sampled_from(["1", "2", "0", "01", "", "x", "1.0", " 1", "10", "9" * 19, "\u00b2"])
origin_ids = st.sampled_from(["1-0", "1700000000000-3", "5", "a-b", f"{2**64}-0", "-1-2", ""])


@st.composite
def entries(draw: st.DrawFn, *, with_job_id: bool) -> dict[bytes, bytes]:
    """A field map as Redis returns it: starting from a valid entry, possibly broken."""
    event_type = draw(st.sampled_from([*EVENT_TYPES, "other.type", ""]))
    fields: dict[str, str] = {"v": "1", "type": event_type}
    if with_job_id:
        fields["job_id"] = draw(ids)
    elif event_type != "client.metrics" or draw(st.booleans()):
        fields["server_uuid"] = draw(ids)
    if event_type == "host.heartbeat" or draw(st.integers(0, 5)) == 0:
        fields["host_type"] = draw(st.sampled_from(["server", "client", "", "worker", "Server"]))
        if fields["host_type"] == "client" and not with_job_id and draw(st.booleans()):
            fields.pop("server_uuid", None)  # a client's heartbeat named by its uuid alone
    if event_type in ("client.metrics", "host.heartbeat") or draw(st.booleans()):
        fields["client_uuid"] = draw(ids)
    if event_type not in ("job.status", "host.heartbeat") or draw(st.booleans()):
        fields["metrics"] = draw(metrics_texts)
    if event_type == "job.status" or draw(st.booleans()):
        fields["status"] = draw(statuses)
    for name, values in [
        ("error_message", st.text(max_size=10)),
        ("sent_at", st.text(max_size=10)),
        ("origin_id", origin_ids),
        ("extra", st.text(max_size=10)),
    ]:
        if draw(st.integers(0, 3)) == 0:
            fields[name] = draw(values)
    if draw(st.booleans()):
        fields["v"] = draw(versions)
    for name in list(fields):
        if draw(st.integers(0, 9)) == 0 and (with_job_id is False or name != "job_id"):
            del fields[name]  # a missing field (job_id stays: these are entries with one)
    raw = {key.encode(): value.encode("utf-8", "surrogatepass") for key, value in fields.items()}
    if raw and draw(st.integers(0, 15)) == 0:
        raw[draw(st.sampled_from(list(raw)))] = b"\xff\xfe"  # not UTF-8
    return raw


@SETTINGS
@given(entries(with_job_id=True))
def test_the_producer_accepts_exactly_what_the_worker_accepts(fields: dict[bytes, bytes]) -> None:
    worker = worker_verdict(fields)
    producer = producer_verdict(fields)
    assert (producer is None) == (worker is None), f"producer: {producer}; worker: {worker}"
    if worker is not None and producer is not None:  # and files a refusal the same way
        assert producer.split(":")[0] == worker.split(":")[0], (producer, worker)


def test_entries_named_by_uuid_only() -> None:
    @SETTINGS
    @given(entries(with_job_id=False))
    def agree(fields: dict[bytes, bytes]) -> None:
        worker = worker_verdict(fields)
        producer = producer_verdict(fields)
        assert (producer is None) == (worker is None), f"producer: {producer}; worker: {worker}"

    agree()


# --- what the producer builds, the worker takes ---------------------------------------------

metrics_dicts = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


@SETTINGS
@given(
    kind=st.sampled_from(["server", "client", "status", "heartbeat"]),
    job_id=st.one_of(st.none(), ids),
    uuid=st.one_of(st.none(), ids),
    metrics=metrics_dicts,
    status=statuses,
    error_message=st.one_of(st.none(), st.text(max_size=10)),
)
def test_what_the_publisher_writes_the_worker_accepts(
    kind: str,
    job_id: str | None,
    uuid: str | None,
    metrics: dict[str, Any],
    status: str,
    error_message: str | None,
) -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    publisher = EventPublisher(client, limits=PRODUCER_LIMITS)
    try:
        if kind == "server":
            publisher.server_metrics(job_id, metrics, server_uuid=uuid)
        elif kind == "client":
            publisher.client_metrics(job_id, uuid, metrics)  # type: ignore[arg-type]
        elif kind == "heartbeat":
            host_type = "client" if len(status) % 2 else "server"
            publisher.heartbeat(
                host_type,
                job_id=job_id,
                server_uuid=uuid if host_type == "server" else None,
                client_uuid=uuid if host_type == "client" else None,
            )
        else:
            publisher.status(job_id, status, error_message, server_uuid=uuid)
    except InvalidEvent:
        assert client.xlen("florist:events") == 0  # refused before anything was written
        return
    [(_, fields)] = client.xrange("florist:events")
    assert check_entry(fields, PRODUCER_LIMITS)
    parse_entry(fields, WORKER_LIMITS)  # raises if the worker would refuse it
    if kind in (
        "server",
        "client",
    ):  # strict JSON text: no bare NaN/Infinity for JSON.parse to choke on
        assert not _has_non_finite(json.loads(fields[b"metrics"]))


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    return False


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (lambda p: p.server_metrics("j", {1: "a"}), "keys must be text"),
        (lambda p: p.server_metrics("j", {"a": object()}), "not JSON serializable"),
        (lambda p: p.server_metrics("j", {"a": {"b": {"c": {"d": {}}}}}), "nested 5"),
        (lambda p: p.server_metrics("j", {"blob": "x" * 700}), "over the limit of 600"),
        (lambda p: p.status("j", "DONE"), "unknown status"),
    ],
)
def test_python_values_the_producer_refuses(call: Any, why: str) -> None:
    """Refused before encoding: values with no JSON text, or that the worker would refuse."""
    publisher = EventPublisher(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    publisher.limits = PRODUCER_LIMITS
    with pytest.raises(InvalidEvent, match=why):
        call(publisher)


from florist_events.jsontext import dumps_compatible, dumps_strict  # noqa: E402

from tests.test_hostile import assert_browser_json  # noqa: E402
from worker.jsontext import parse_metrics_text  # noqa: E402

# --- the producers' encoder always writes what the browser and the worker read alike ------

_any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**1100), 2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)


@SETTINGS
@given(st.dictionaries(st.text(max_size=4), _any_json, max_size=4))
def test_strict_text_has_no_number_a_browser_reads_as_infinity(value: dict[str, Any]) -> None:
    for text in (dumps_strict(value), dumps_compatible(value)):
        assert_browser_json(text)
    _parsed, stored = parse_metrics_text(dumps_strict(value), 64)
    assert stored == dumps_strict(value)  # stored as the producer wrote it
