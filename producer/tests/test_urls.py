"""Redis Sentinel URLs in the producer: ``redis+sentinel://`` read in one place
(:mod:`florist_events.urls`), for :meth:`EventPublisher.from_url` and the reporter's
``url=``, with the producer's fail-fast client. No sentinel runs here: the worker's test
suite publishes through real ones (tests/test_sentinel.py)."""

from __future__ import annotations

import time

import pytest
import redis

from florist_events import EventPublisher, StreamMetricsReporter
from florist_events.urls import describe_error, parse_sentinel_url, sentinel_client

# Nothing listens on port 1 of loopback: a sentinel that is not there.
NOWHERE = "redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc/0"


def test_a_sentinel_url_names_sentinels_service_database_and_the_primary_s_credentials():
    url = "rediss+sentinel://user:p%40ss@s1:26380,s2,[::1]:26381/my-primary/3?ssl_cert_reqs=none"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert parsed.service == "my-primary"
    assert parsed.tls
    assert dict(parsed.options) == {
        "username": "user",
        "password": "p@ss",
        "db": 3,
        "ssl_cert_reqs": "none",
    }
    assert parse_sentinel_url("REDIS+SENTINEL://s1/p").options == {"db": 0}
    assert "p@ss" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel:///svc/0", "no sentinel address"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1:26379/", "no service name"),
        ("redis+sentinel://s1:26379/svc/zero", "bad database 'zero'"),
        ("redis+sentinel://s1:26379/svc/0/1", "bad database '0/1'"),
        ("redis+sentinel://:secret@s1:port/svc", "bad sentinel address 's1:port'"),
        ("redis+sentinel://s1,,s2/svc", "empty sentinel address"),
        ("redis://s1/svc", "not a Sentinel URL"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong_without_the_password(url, problem):
    with pytest.raises(ValueError, match=problem) as refused:
        parse_sentinel_url(url)
    assert "secret" not in str(refused.value)
    if url.startswith("redis+sentinel"):
        with pytest.raises(ValueError, match=problem):
            EventPublisher.from_url(url, "events")  # at once, not at the first publish


def test_a_publisher_on_sentinel_fails_fast_when_no_sentinel_answers():
    publisher = EventPublisher.from_url(NOWHERE, "events", timeout_s=0.2)
    assert publisher.redis.connection_pool.connection_kwargs["socket_timeout"] == 0.2
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="No master found for 'svc'"):
        publisher.status("job-1", "IN_PROGRESS")
    assert time.monotonic() - started < 2  # two sentinels refused, no retries
    publisher.close()


def test_a_sentinel_url_is_no_cluster():
    with pytest.raises(ValueError, match="not a Redis Cluster"):
        EventPublisher.from_url(NOWHERE, "events", cluster=True)


def test_the_reporter_takes_a_url_in_place_of_host_and_port():
    reporter = StreamMetricsReporter(url=NOWHERE, run_id="r", heartbeat_interval_s=None)
    assert reporter.florist_form and reporter.snapshot_key  # FLorist's form, by uuid
    reporter.report({"fit_start": "t", "host_type": "server"})  # fails, logs, keeps it
    assert reporter.pending
    with pytest.raises(ValueError, match="pass url= alone"):
        StreamMetricsReporter(host="h", port=6379, url=NOWHERE)
    with pytest.raises(ValueError, match="pass url= alone"):
        StreamMetricsReporter(url=NOWHERE, password="p")
    with pytest.raises(ValueError, match="sentinel_password goes with"):
        StreamMetricsReporter(host="h", port=6379, sentinel_password="p")


def test_an_error_is_described_on_one_short_line_without_redis_py_object_reprs() -> None:
    """A Sentinel that answers nothing raises MasterNotFoundError whose message ends with the
    repr of a redis-py client (about 1,300 characters of connection settings): logs and
    messages keep the type and Redis's words only."""
    client = sentinel_client("redis+sentinel://127.0.0.1:1/svc/0", socket_timeout=0.2)
    try:
        client.ping()
    except redis.RedisError as error:
        assert "<redis." in str(error)  # what redis-py puts in the message
        described = describe_error(error)
    else:
        raise AssertionError("a Sentinel on a closed port answered")
    assert described == "MasterNotFoundError: No master found for 'svc'"
    assert describe_error(ValueError("two\n  lines")) == "ValueError: two lines"
    assert describe_error(RuntimeError()) == "RuntimeError"
