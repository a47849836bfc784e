"""EventPublisher on fakeredis: entries by job id and by uuid, the stream's name, pickling."""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import fakeredis
import pytest
import redis

from florist_events import EventPublisher, InvalidEvent, Limits, check_entry

JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
SERVER = "d73243cf-8b89-473b-9607-8cd0253a101d"
CLIENT = "0c316680-1375-4e07-84c3-a732a2e6d03f"
STREAM = "florist:events"


def entries(client: redis.Redis, stream: str = STREAM) -> list[dict[str, str]]:
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _, fields in client.xrange(stream)
    ]


def without_sent_at(fields: dict[str, str]) -> dict[str, str]:
    assert fields.pop("sent_at")
    return fields


def test_server_metrics_by_job_id(fake: fakeredis.FakeRedis) -> None:
    entry_id = EventPublisher(fake).server_metrics(JOB, {"host_type": "server", "loss": math.nan})
    [fields] = entries(fake)
    assert entry_id == fake.xrange(STREAM)[0][0].decode()
    assert without_sent_at(fields) == {
        "v": "1",
        "type": "server.metrics",
        "job_id": JOB,
        "metrics": '{"host_type":"server","loss":"NaN"}',
    }


def test_events_by_uuid_carry_no_job_id(fake: fakeredis.FakeRedis) -> None:
    publisher = EventPublisher(fake)
    publisher.server_metrics(None, {"fit_start": "t"}, server_uuid=SERVER)
    publisher.client_metrics(None, CLIENT, {"initialized": "t"})
    publisher.status(None, "FINISHED_WITH_ERROR", "boom", server_uuid=SERVER)
    server, client, status = (without_sent_at(fields) for fields in entries(fake))
    assert server == {
        "v": "1",
        "type": "server.metrics",
        "server_uuid": SERVER,
        "metrics": '{"fit_start":"t"}',
    }
    assert client == {
        "v": "1",
        "type": "client.metrics",
        "client_uuid": CLIENT,
        "metrics": '{"initialized":"t"}',
    }
    assert status == {
        "v": "1",
        "type": "job.status",
        "server_uuid": SERVER,
        "status": "FINISHED_WITH_ERROR",
        "error_message": "boom",
    }
    for fields in entries(fake):
        check_entry(fields)


def test_both_identities_may_be_given(fake: fakeredis.FakeRedis) -> None:
    EventPublisher(fake).server_metrics(JOB, {}, server_uuid=SERVER)
    [fields] = entries(fake)
    assert (fields["job_id"], fields["server_uuid"]) == (JOB, SERVER)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.server_metrics(None, {}), "job_id' or 'server_uuid"),
        (lambda p: p.status(None, "IN_PROGRESS"), "job_id' or 'server_uuid"),
        (lambda p: p.client_metrics(None, None, {}), "client_uuid"),
        (lambda p: p.client_metrics(JOB, "", {}), "client_uuid"),
        (lambda p: p.server_metrics(JOB, {"a": {"b": {"c": {}}}}), "nested 4 levels deep"),
        (lambda p: p.server_metrics(JOB, {"blob": "x" * 300}), "over the limit of 256"),
        (lambda p: p.publish_fields({}), "at least one field"),
        (lambda p: p.build_fields({"type": "other"}), "unknown type"),
    ],
)
def test_refusals_write_nothing(fake: fakeredis.FakeRedis, call: Any, message: str) -> None:
    publisher = EventPublisher(fake, limits=Limits(max_entry_bytes=256, max_metrics_depth=3))
    with pytest.raises(InvalidEvent, match=message):
        call(publisher)
    assert not fake.exists(STREAM)


def test_build_fields_dispatches_on_type(fake: fakeredis.FakeRedis) -> None:
    publisher = EventPublisher(fake)
    fields = publisher.build_fields(
        {"type": "client.metrics", "client_uuid": CLIENT, "metrics": {}}
    )
    assert fields["client_uuid"] == CLIENT
    status = publisher.build_fields({"type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"})
    assert status["status"] == "IN_PROGRESS"


def test_stream_comes_from_florist_stream(
    fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLORIST_STREAM", "from-env")
    assert EventPublisher(fake).stream == "from-env"
    assert EventPublisher(fake, "given").stream == "given"
    assert EventPublisher.from_url("redis://127.0.0.1:1/0").stream == "from-env"
    assert EventPublisher.from_host("127.0.0.1", "1").stream == "from-env"
    EventPublisher(fake).status(JOB, "IN_PROGRESS")
    assert fake.xlen("from-env") == 1 and not fake.exists(STREAM)


@pytest.mark.parametrize("maxlen", [0, -1, 1.5, True, "10"])
def test_bad_maxlen_is_refused(fake: fakeredis.FakeRedis, maxlen: Any) -> None:
    with pytest.raises(ValueError, match="maxlen"):
        EventPublisher(fake, maxlen=maxlen)


def test_set_keys_go_with_the_entry_in_one_transaction(fake: fakeredis.FakeRedis) -> None:
    publisher = EventPublisher(fake)
    fields = {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"}
    entry_id = publisher.publish_fields(fields, set_keys={SERVER: '{"a": 1}'})
    assert fake.get(SERVER) == b'{"a": 1}'
    assert [entry_id] == [eid.decode() for eid, _ in fake.xrange(STREAM)]
    publisher.set_keys({SERVER: "2", CLIENT: "3"})
    assert (fake.get(SERVER), fake.get(CLIENT)) == (b"2", b"3")


def test_from_host_makes_a_producer_client_lazily() -> None:
    publisher = EventPublisher.from_host("127.0.0.1", "6380", username="u", password="p", db=2)
    assert publisher._redis is None  # nothing made or connected yet
    kwargs = publisher.redis.get_connection_kwargs()
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("u", "p")
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5
    assert publisher.redis.get_retry().get_retries() == 0
    with pytest.raises(ValueError, match="port"):
        EventPublisher.from_host("127.0.0.1", "redis")


def test_an_owned_client_is_remade_after_unpickling() -> None:
    publisher = EventPublisher.from_url("redis://127.0.0.1:6390/3", "s", 7, timeout_s=0.25)
    publisher.redis  # noqa: B018 - made now
    copy = pickle.loads(pickle.dumps(publisher))
    assert copy._redis is None
    assert (copy.stream, copy.maxlen) == ("s", 7)
    kwargs = copy.redis.get_connection_kwargs()
    assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (6390, 3, 0.25)


def test_a_publisher_on_a_given_client_does_not_pickle(fake: fakeredis.FakeRedis) -> None:
    with pytest.raises(TypeError, match=r"from_url or EventPublisher\.from_host"):
        pickle.dumps(EventPublisher(fake))


def test_close_lets_an_owned_client_be_made_again() -> None:
    publisher = EventPublisher.from_host("127.0.0.1", 1)
    first = publisher.redis
    publisher.close()
    assert publisher.redis is not first


def test_metrics_text_is_strict_json(fake: fakeredis.FakeRedis) -> None:
    EventPublisher(fake).client_metrics(JOB, CLIENT, {"r": {"1": {"v": [1.5, -math.inf]}}})
    [fields] = entries(fake)

    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token}")

    assert json.loads(fields["metrics"], parse_constant=refuse) == {
        "r": {"1": {"v": [1.5, "-Infinity"]}}
    }


def test_a_cluster_publisher_connects_when_first_used() -> None:
    publisher = EventPublisher.from_url("redis://127.0.0.1:1/0", "s", cluster=True, timeout_s=0.2)
    assert publisher._redis is None  # nothing made yet: a worker may start during an outage
    with pytest.raises((redis.RedisError, redis.exceptions.RedisClusterException)):
        publisher.status(JOB, "IN_PROGRESS")
    with pytest.raises(ValueError, match="scheme"):
        EventPublisher.from_url("http://nowhere", cluster=True)
