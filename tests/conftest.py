"""Shared fixtures: a private Redis, a MongoDB database, and the sample run."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import mongomock_ng
import pymongo
import pytest
import redis
from pymongo.database import Database

from tests.mongo_checks import CheckingDatabase
from tests.redis_server import RedisServer
from worker.logs import configure_logging
from worker.mongo_failures import describe
from worker.settings import redact_url

MONGODB_PING_TIMEOUT_S = 3


def pytest_configure(config: pytest.Config) -> None:
    """With ``FLORIST_TEST_MONGODB_URI`` (``./dev test-mongodb URI``), stop before any test
    is collected, with one line (pytest's usage error, exit 4), when no MongoDB answers
    there within a few seconds: otherwise every test that uses the database waits out its
    own server selection, and the run ends minutes later in a traceback."""
    uri = os.environ.get("FLORIST_TEST_MONGODB_URI")
    if not uri:
        return
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=MONGODB_PING_TIMEOUT_S * 1000
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()
    except (pymongo.errors.PyMongoError, ValueError) as error:
        raise pytest.UsageError(
            f"FLORIST_TEST_MONGODB_URI={redact_url(uri)}: no MongoDB to test against "
            f"({describe(error)}; waited {MONGODB_PING_TIMEOUT_S} s)"
        ) from None


@pytest.fixture(autouse=True)
def _logging_at_info() -> None:
    """Each test starts from the same logging setup (commands under test reconfigure it);
    per-entry debug lines would only slow the tests."""
    configure_logging("info", "console")


SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
if not SAMPLES.is_dir():  # a clone placed elsewhere: samples are also vendored
    SAMPLES = Path(__file__).resolve().parent / "samples"


def load_job_document() -> dict[str, Any]:
    return json.loads((SAMPLES / "job.json").read_text())


def load_sample_entries() -> list[dict[str, str]]:
    """The 38 sample events as stream field maps (metrics as JSON text)."""
    entries = []
    for line in (SAMPLES / "job_run.jsonl").read_text().splitlines():
        fields = json.loads(line)
        if "metrics" in fields:
            fields["metrics"] = json.dumps(fields["metrics"])
        entries.append(fields)
    return entries


@pytest.fixture
def job_document() -> dict[str, Any]:
    return load_job_document()


@pytest.fixture
def sample_entries() -> list[dict[str, str]]:
    return load_sample_entries()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the session, or ``FLORIST_TEST_REDIS_URL`` (flushed!)."""
    external = os.environ.get("FLORIST_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def fake_redis() -> redis.Redis:
    return fakeredis.FakeRedis()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill and restart at will."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database() -> Iterator[Database[Any]]:
    """mongomock-ng, or a fresh database on ``FLORIST_TEST_MONGODB_URI`` (dropped after);
    every update sent to it is checked as a real server would (tests/mongo_checks.py)."""
    uri = os.environ.get("FLORIST_TEST_MONGODB_URI")
    if not uri:
        yield CheckingDatabase(mongomock_ng.MongoClient()["florist-test"])  # type: ignore[misc]
        return
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    name = f"florist-test-{uuid.uuid4().hex[:12]}"
    try:
        yield CheckingDatabase(client[name])  # type: ignore[misc]
    finally:
        client.drop_database(name)
        client.close()
