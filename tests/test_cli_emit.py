"""``florist-worker emit`` names a job as the wire format does: by ``--job``, by the FL
server's uuid (``--server-uuid``), or by the client's uuid alone for client metrics; the
worker applies what it publishes that way."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import redis
from pymongo.database import Database

from tests.support import settings
from worker.cli import main
from worker.consumer import Worker
from worker.entities import JOB_COLLECTION, ClientInfo, Job

SERVER_UUID = "server-uuid-1"
CLIENT_UUID = "client-uuid-1"


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> str:
    for name in list(os.environ):
        if name.upper().startswith("FLORIST_"):
            monkeypatch.delenv(name)
    name = f"test:emit:{uuid.uuid4().hex}"
    monkeypatch.setenv("FLORIST_STREAM", name)
    return name


def emit(redis_url: str, *argv: str) -> None:
    assert main(["emit", *argv, "--redis-url", redis_url]) == 0


@pytest.mark.redis_server
def test_events_emitted_by_uuid_carry_no_job_id_and_are_applied(
    redis_url: str, stream: str, database: Database[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    client_info = ClientInfo(
        client="MNIST", service_address="a:1", data_path="d", redis_host="h", redis_port="1"
    )
    client_info.uuid = CLIENT_UUID
    job = Job(_id="job-1", server_uuid=SERVER_UUID, clients_info=[client_info])
    database[JOB_COLLECTION].insert_one(job.to_document())

    emit(redis_url, "status", "--server-uuid", SERVER_UUID, "--status", "IN_PROGRESS")
    emit(redis_url, "server-metrics", "--server-uuid", SERVER_UUID, "--metrics", '{"a": 1}')
    emit(redis_url, "client-metrics", "--client-uuid", CLIENT_UUID, "--metrics", '{"b": 2}')
    assert len(capsys.readouterr().out.split()) == 3  # one entry ID each

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = [fields for _id, fields in client.xrange(stream)]
        assert not any("job_id" in fields for fields in entries)
        assert [fields.get("server_uuid") for fields in entries] == [SERVER_UUID] * 2 + [None]
        assert entries[2]["client_uuid"] == CLIENT_UUID
        counts = Worker(client, database, settings(stream=stream)).drain()
    finally:
        client.delete(stream, f"{stream}:dead")
        client.close()
    assert counts == {"applied": 3}
    document = database[JOB_COLLECTION].find_one({"_id": "job-1"})
    assert document is not None
    assert document["status"] == "IN_PROGRESS"
    assert json.loads(document["server_metrics"]) == {"a": 1}
    assert json.loads(document["clients_info"][0]["metrics"]) == {"b": 2}
