"""Settings: environment, validation, and no secrets in what gets logged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.settings import Settings, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://worker:s3cret@redis:6380/0", "rediss://worker:***@redis:6380/0"),
        ("mongodb://u:p%40ss@h1,h2/?tls=true", "mongodb://u:***@h1,h2/?tls=true"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("memory://", "memory://"),
    ],
)
def test_passwords_never_reach_the_logs(url, shown):
    assert redact_url(url) == shown


def test_the_start_up_line_is_redacted():
    settings = Settings(
        redis_url="redis://w:s3cret@r:6379/0", mongodb_uri="mongodb://m:t0p@m:27017"
    )
    assert "s3cret" not in str(settings.redacted()) and "t0p" not in str(settings.redacted())


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("FLORIST_STREAM", "other:events")
    monkeypatch.setenv("FLORIST_MAX_DELIVERIES", "9")
    settings = Settings()
    assert (settings.stream, settings.max_deliveries) == ("other:events", 9)


def test_block_must_stay_below_the_socket_timeout():
    with pytest.raises(ValidationError, match="below the Redis socket timeout"):
        Settings(block_ms=5000, socket_timeout_s=5)
    Settings(block_ms=4999, socket_timeout_s=5)


def test_consumer_name_defaults_to_host_and_pid():
    import os
    import socket

    assert Settings().consumer == f"{socket.gethostname()}-{os.getpid()}"
