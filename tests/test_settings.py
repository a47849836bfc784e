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
        (
            "redis+sentinel://w:s3cret@s1:26379,s2:26379/primary/0",
            "redis+sentinel://w:***@s1:26379,s2:26379/primary/0",
        ),
        ("rediss+sentinel://:s3cret@s1/primary", "rediss+sentinel://:***@s1/primary"),
    ],
)
def test_passwords_never_reach_the_logs(url, shown):
    assert redact_url(url) == shown


def test_the_start_up_line_is_redacted():
    settings = Settings(
        redis_url="redis://w:s3cret@r:6379/0", mongodb_uri="mongodb://m:t0p@m:27017"
    )
    assert "s3cret" not in str(settings.redacted()) and "t0p" not in str(settings.redacted())


def test_the_sentinel_password_is_hidden_in_the_start_up_line():
    settings = Settings(
        redis_url="redis+sentinel://:s3cret@s1:26379/primary/0", redis_sentinel_password="t0p"
    )
    assert settings.sentinel_password == "t0p"
    values = settings.redacted()
    assert values["redis_sentinel_password"] == "**********"
    assert "s3cret" not in str(values) and "t0p" not in str(values) and "t0p" not in repr(settings)
    assert Settings().sentinel_password is None


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("FLORIST_STREAM", "other:events")
    monkeypatch.setenv("FLORIST_MAX_DELIVERIES", "9")
    settings = Settings()
    assert (settings.stream, settings.max_deliveries) == ("other:events", 9)


def test_a_sentinel_url_in_cluster_mode_is_refused():
    with pytest.raises(ValidationError, match="Sentinel watches one primary, not a Redis Cluster"):
        Settings(redis_url="redis+sentinel://s1:26379/primary", redis_cluster=True)
    Settings(redis_url="redis+sentinel://s1:26379/primary", redis_cluster=False)


def test_block_must_stay_below_the_socket_timeout():
    with pytest.raises(ValidationError, match="below the Redis socket timeout"):
        Settings(block_ms=5000, socket_timeout_s=5)
    Settings(block_ms=4999, socket_timeout_s=5)


def test_consumer_name_defaults_to_host_pid_and_a_random_part():
    import os
    import re
    import socket

    first, second = Settings().consumer, Settings().consumer
    prefix = re.escape(f"{socket.gethostname()}-{os.getpid()}-")
    assert re.fullmatch(prefix + "[0-9a-f]{6}", first), first
    assert first != second  # one host, one pid (a container's pid 1): still two names


# -- settings refuse typos --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [("debug", "debug"), ("INFO", "info"), (" Warning ", "warning"), ("error", "error")],
)
def test_log_level_is_one_of_four_in_any_case(given, stored):
    assert Settings(log_level=given).log_level == stored


@pytest.mark.parametrize("typo", ["loud", "degub", "warn", "critical", ""])
def test_a_log_level_typo_is_refused_naming_the_accepted_values(typo):
    with pytest.raises(ValidationError, match="'debug', 'info', 'warning' or 'error'"):
        Settings(log_level=typo)


@pytest.mark.parametrize("typo", ["xml", "text", "jsonl"])
def test_a_log_format_typo_is_refused(typo, monkeypatch):
    monkeypatch.setenv("FLORIST_LOG_FORMAT", typo)
    with pytest.raises(ValidationError, match="'json', 'console' or 'auto'"):
        Settings()
    assert Settings(log_format="JSON").log_format == "json"


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://u:p@h:6380/0",
        "unix:///tmp/redis.sock",
        "redis+sentinel://s1:26379,s2:26379,s3:26379/primary/0",
        "rediss+sentinel://u:p@s1/primary",
        "REDIS+SENTINEL://s1/primary/2",
    ],
)
def test_redis_urls_that_work(url):
    assert Settings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("nope://x", "unsupported scheme nope://"),
        ("localhost:6379", "expected redis://"),
        ("http://localhost", "unsupported scheme http://"),
        ("redis://:s3cret@h:port/0", "bad port"),
        ("redis+sentinel://:s3cret@s1:26379", "no service name"),
        ("redis+sentinel://:s3cret@s1:x/primary", "bad sentinel address 's1:x'"),
        ("redis+sentinel://:s3cret@s1/primary/db0", "bad database 'db0'"),
        ("redis+sentinel://:s3cret@/primary", "no sentinel address"),
    ],
)
def test_redis_urls_that_cannot_work_are_refused_without_the_password(url, problem):
    with pytest.raises(ValidationError) as refused:
        Settings(redis_url=url)
    message = str(refused.value.errors(include_url=False)[0]["msg"])
    assert problem in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://localhost:27017",
        "mongodb+srv://u:p@cluster.example.org/?retryWrites=true",
        "mongodb://u:p%40ss@h1:27017,h2:27018/?tls=true",
        "memory://",
    ],
)
def test_mongodb_uris_that_work(uri):
    assert Settings(mongodb_uri=uri).mongodb_uri == uri


@pytest.mark.parametrize("uri", ["nope://x", "mongo://h", "postgres://h/db", "mongodb://h:99999"])
def test_mongodb_uris_that_cannot_work_are_refused(uri):
    with pytest.raises(ValidationError, match="mongodb_uri"):
        Settings(mongodb_uri=uri)


@pytest.mark.parametrize("name", ["", "a.b", "my db", "x/y", 'q"'])
def test_database_names_mongodb_refuses_are_refused(name):
    with pytest.raises(ValidationError, match="not a MongoDB database name"):
        Settings(mongodb_db=name)


def test_the_start_up_line_holds_json_values_only(tmp_path):
    import json

    settings = Settings(heartbeat_file=tmp_path / "hb")
    values = settings.redacted()
    assert values["heartbeat_file"] == str(tmp_path / "hb")
    assert "PosixPath" not in repr(values)
    assert json.loads(json.dumps(values)) == values


# -- unknown FLORIST_* variables: a warning, with the nearest name ---------------------------


def test_unknown_florist_variables_are_reported_with_the_nearest_setting():
    from worker.settings import unknown_variables

    warnings = unknown_variables(
        {
            "FLORIST_STREM": "x",
            "FLORIST_LOG_LEVLE": "debug",
            "FLORIST_SOMETHING_ELSE": "1",
            "FLORIST_STREAM": "ok",
            "florist_group": "ok",  # pydantic-settings reads names in any case
            "FLORIST_TEST_REDIS_URL": "redis://x",  # the test suite's own
            "FLORIST_FUZZ_SCALE": "3",  # ./dev fuzz's
            "PATH": "/bin",
        }
    )
    assert warnings == [
        "ignoring unknown environment variable FLORIST_LOG_LEVLE (did you mean FLORIST_LOG_LEVEL?)",
        "ignoring unknown environment variable FLORIST_SOMETHING_ELSE",
        "ignoring unknown environment variable FLORIST_STREM (did you mean FLORIST_STREAM?)",
    ]


def test_an_unknown_variable_does_not_stop_the_settings(monkeypatch):
    monkeypatch.setenv("FLORIST_STREM", "typo:events")
    assert Settings().stream == "florist:events"


def test_invalid_setting_names_the_variable():
    from worker.settings import InvalidSetting

    error = InvalidSetting("redis_url", "bad")
    assert str(error) == "redis_url (FLORIST_REDIS_URL): bad"
    assert isinstance(error, ValueError)
