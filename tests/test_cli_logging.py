"""Logging: the command line's configuration refuses typos, and every command logs as
FLORIST_LOG_FORMAT says; used as a library, the worker
logs at info and above (no debug line per event) unless the application configured
structlog, whose configuration always wins. structlog's configuration is process-wide,
so the library cases run in fresh interpreters."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import redis

from worker.logs import configure_logging

PREAMBLE = """
import fakeredis, mongomock_ng, structlog
"""

DRAIN_ONE_EVENT = """
from worker.consumer import Worker
from worker.producer import EventPublisher
from worker.settings import Settings

client = fakeredis.FakeRedis()
database = mongomock_ng.MongoClient()["florist-server"]
database["job"].insert_one({"_id": "job-1", "status": "NOT_STARTED"})
EventPublisher(client).status("job-1", "IN_PROGRESS")
print(Worker(client, database, Settings()).drain())
structlog.get_logger("app").debug("app debug line")
structlog.get_logger("app").info("app info line")
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def test_unconfigured_library_use_logs_info_and_above_on_stderr_only() -> None:
    completed = run_python(PREAMBLE + DRAIN_ONE_EVENT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "{'applied': 1}\n"  # stdout is the application's
    assert "entry handled" not in completed.stderr  # the per-event debug line
    assert "app debug line" not in completed.stderr
    assert "app info line" in completed.stderr
    assert "consumer group created" in completed.stderr


def test_an_application_configured_before_the_import_is_left_alone() -> None:
    completed = run_python(
        PREAMBLE
        + """
import logging
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
before = structlog.get_config()
import worker
assert structlog.get_config() == before
"""
        + DRAIN_ONE_EVENT
    )
    assert completed.returncode == 0, completed.stderr
    assert "entry handled" in completed.stdout  # the application asked for debug lines
    assert "app debug line" in completed.stdout  # on structlog's default stream


def test_an_application_configuring_after_the_import_wins() -> None:
    completed = run_python(
        PREAMBLE
        + """
import logging, sys
import worker
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
)
"""
        + DRAIN_ONE_EVENT
    )
    assert completed.returncode == 0, completed.stderr
    assert "entry handled" in completed.stdout
    assert "app debug line" in completed.stdout


def test_use_default_logging_never_overrides_a_configuration() -> None:
    completed = run_python(
        """
import structlog
from worker.logs import use_default_logging
assert structlog.is_configured()  # importing worker set the default
assert use_default_logging() is False
structlog.reset_defaults()
assert use_default_logging() is True
assert use_default_logging() is False
"""
    )
    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize(("level", "log_format"), [("loud", "json"), ("info", "xml")])
def test_configure_logging_refuses_typos(level: str, log_format: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, log_format, stream=io.StringIO())


def test_configure_logging_takes_any_case_and_writes_to_the_given_stream() -> None:
    import structlog

    out = io.StringIO()
    saved = structlog.get_config()
    try:
        configure_logging("WARNING", "Json", stream=out)
        structlog.get_logger("t").info("hidden")
        structlog.get_logger("t").warning("shown", path="x")
    finally:
        structlog.configure(**saved)
    assert "hidden" not in out.getvalue()
    assert '"event": "shown"' in out.getvalue()


# -- every command logs as FLORIST_LOG_FORMAT says ------------------------------------------


def run_command(argv: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    return subprocess.run(
        [str(Path(sys.executable).with_name("florist-worker")), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment | variables,
        check=False,
    )


@pytest.mark.redis_server
def test_stats_logs_json_lines_when_asked(redis_url: str) -> None:
    done = run_command(
        ["stats", "--mongodb-uri", "memory://"],
        FLORIST_REDIS_URL=redis_url,
        FLORIST_STREAM=f"test:logs:{uuid.uuid4().hex}",
        FLORIST_LOG_FORMAT="json",
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert json.loads(line)["event"].startswith("using the in-memory MongoDB")


@pytest.mark.redis_server
def test_dlq_logs_json_lines_when_asked(redis_url: str) -> None:
    stream = f"test:logs:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    client.xadd(
        f"{stream}:dead",
        {"v": "1", "type": "job.status", "job_id": "j", "status": "IN_PROGRESS"}
        | {"dead_reason": "unknown_job", "dead_error": "no job j", "deliveries": "5"},
    )
    try:
        done = run_command(
            ["dlq", "requeue", "--all"],
            FLORIST_REDIS_URL=redis_url,
            FLORIST_STREAM=stream,
            FLORIST_LOG_FORMAT="json",
        )
    finally:
        client.delete(stream, f"{stream}:dead")
        client.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("requeued 1 dead letter(s)")
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [record["event"] for record in records] == ["dead letter requeued"]
