"""Every setting of the worker, read from ``FLORIST_*`` environment variables.

One model, so the command line, the configuration table of docs/operations.md and the code
cannot drift apart: ``--help`` and the table are generated from these fields.
"""

from __future__ import annotations

import difflib
import os
import secrets
import socket
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self, get_args
from urllib.parse import urlsplit, urlunsplit

from florist_events.urls import SENTINEL_SCHEMES, is_sentinel_url, parse_sentinel_url
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.events import DEFAULT_MAX_ENTRY_BYTES, DEFAULT_MAX_METRICS_DEPTH, Limits

ENV_PREFIX: Final = "FLORIST_"
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console", "auto"]
LOG_LEVELS: Final[tuple[str, ...]] = get_args(LogLevel)
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
MONGODB_SCHEMES: Final = ("mongodb", "mongodb+srv", "memory")
DATABASE_NAME_FORBIDS: Final = frozenset(' ./\\"$\x00')
# FLORIST_* variables that are not settings of the worker but are expected in its
# environment: the test suite's (FLORIST_TEST_REDIS_URL, FLORIST_TEST_MONGODB_URI, and
# FLORIST_FUZZ_SCALE of ./dev fuzz).
OTHER_VARIABLE_PREFIXES: Final = ("FLORIST_TEST_", "FLORIST_FUZZ_")


class InvalidSetting(ValueError):
    """A setting's value cannot work; the message names the setting and its variable."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting} ({env_name(setting)}): {problem}")


def env_name(setting: str) -> str:
    """``redis_url`` -> ``FLORIST_REDIS_URL``."""
    return f"{ENV_PREFIX}{setting.upper()}"


def default_consumer_name() -> str:
    """``<hostname>-<pid>-<random>``, readable in XINFO CONSUMERS and unique even where
    processes share a hostname and a pid (containers on one host network, each pid 1).

    A restarted worker so gets a new name: its predecessor's pending entries are claimed
    after ``claim_idle_ms``; set ``FLORIST_CONSUMER`` per replica to take them back at
    start instead (one live worker per name: see :mod:`worker.presence`)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _default_dead_stream(values: dict[str, Any]) -> str:
    """``<stream>:dead``: it shares the stream's hash tag, as Redis Cluster needs."""
    return f"{values.get('stream', 'florist:events')}:dead"


class Settings(BaseSettings):
    """Settings with their defaults; environment variables are ``FLORIST_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLORIST_", extra="ignore", frozen=True)

    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis URL (rediss:// for TLS; redis+sentinel://host:26379,.../<service>/<db> "
        "behind Redis Sentinel)",
    )
    redis_cluster: bool = Field(
        False, description="Redis Cluster mode: the URL is one node (docs/redis-ha.md)"
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="password of the sentinels of a redis+sentinel:// URL, if they need one"
    )
    mongodb_uri: str = Field(
        "mongodb://localhost:27017",
        description="MongoDB URI; memory:// keeps an in-process database that is not saved",
    )
    mongodb_db: str = Field("florist-server", description="MongoDB database holding collection job")
    stream: str = Field("florist:events", description="events stream")
    group: str = Field("florist-worker", description="consumer group")
    consumer: str = Field(default_factory=default_consumer_name, description="consumer name")
    dead_stream: str = Field(
        default_factory=_default_dead_stream,
        description="dead-letter stream (keeps the stream's hash tag)",
    )
    max_deliveries: int = Field(
        5, ge=1, description="deliveries before an entry that keeps failing is dead-lettered"
    )
    claim_idle_ms: int = Field(
        30_000, ge=1, description="idle time after which another consumer may claim an entry"
    )
    retry_idle_ms: int = Field(
        2_000,
        ge=1,
        description="idle time before this worker retries its own unknown_job/client entries",
    )
    unknown_retry_s: float = Field(
        600.0,
        ge=0,
        description="how long an entry for a job or client not stored yet (by id or uuid) is "
        "retried before it is dead-lettered (and at least max_deliveries times)",
    )
    batch_size: int = Field(1000, ge=1, description="entries read per XREADGROUP (COUNT)")
    batched_writes: bool = Field(
        True,
        description="apply a batch in two MongoDB round trips (one read, one bulk_write); "
        "false: one update per event",
    )
    block_ms: int = Field(
        2_000, ge=1, description="XREADGROUP BLOCK; must stay below the Redis socket timeout"
    )
    socket_timeout_s: float = Field(5.0, gt=0, description="Redis socket timeout in seconds")
    backoff_initial_s: float = Field(0.1, gt=0, description="first wait after an outage")
    backoff_max_s: float = Field(10.0, gt=0, description="ceiling of the exponential backoff")
    max_entry_bytes: int = Field(
        DEFAULT_MAX_ENTRY_BYTES, ge=64, description="largest accepted entry (all fields, bytes)"
    )
    max_metrics_depth: int = Field(
        DEFAULT_MAX_METRICS_DEPTH, ge=1, description="deepest accepted nesting of metrics"
    )
    summary_interval_s: float = Field(60.0, gt=0, description="period of the summary log line")
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="period of the heartbeat (and of its Redis and MongoDB pings)"
    )
    heartbeat_ttl_s: float = Field(
        45.0, gt=0, description="age after which a heartbeat counts as stale (unhealthy)"
    )
    heartbeat_file: Path = Field(
        Path(tempfile.gettempdir()) / "florist-worker.heartbeat",
        description="file the running worker refreshes; read by the healthcheck command",
    )
    stale_after_s: float = Field(
        600.0,
        ge=0,
        description="finish an IN_PROGRESS job as FINISHED_WITH_ERROR after its FL server was "
        "silent this long, in stream time (docs/watchdog.md); 0 turns the watchdog off",
    )
    watchdog_interval_s: float = Field(
        30.0, gt=0, description="period of the watchdog's scan (one worker of the group per period)"
    )
    max_entry_ahead_s: float = Field(
        300.0,
        gt=0,
        description="report the stream's last entry ID when it is further ahead of Redis's "
        "clock than this: an explicit XADD ID that moves every later entry (and the watchdog's "
        "view of it) into the future (docs/stream-integrity.md)",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="port of the Prometheus /metrics endpoint (off if unset)"
    )
    log_level: LogLevel = Field("info", description="debug, info, warning or error")
    log_format: LogFormat = Field(
        "auto", description="json, console, or auto (console on a terminal)"
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        check_url(value, REDIS_SCHEMES)
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _mongodb_uri(cls, value: str) -> str:
        check_url(value, MONGODB_SCHEMES)
        return value

    @field_validator("mongodb_db")
    @classmethod
    def _mongodb_db(cls, value: str) -> str:
        bad = sorted({character for character in value if character in DATABASE_NAME_FORBIDS})
        if not value or bad:
            shown = " ".join(repr(character) for character in bad)
            raise ValueError(
                f"not a MongoDB database name ({f'contains {shown}' if bad else 'empty'})"
            )
        return value

    @model_validator(mode="after")
    def _sentinel_is_no_cluster(self) -> Self:
        if self.redis_cluster and is_sentinel_url(self.redis_url):
            raise ValueError(
                "FLORIST_REDIS_URL is a Sentinel URL (redis+sentinel://) and FLORIST_REDIS_CLUSTER "
                "is true: Sentinel watches one primary, not a Redis Cluster; unset one of them"
            )
        return self

    @property
    def sentinel_password(self) -> str | None:
        """FLORIST_REDIS_SENTINEL_PASSWORD as text, or None."""
        secret = self.redis_sentinel_password
        return None if secret is None else secret.get_secret_value()

    @model_validator(mode="after")
    def _block_below_socket_timeout(self) -> Self:
        if self.block_ms >= self.socket_timeout_s * 1000:
            raise ValueError(
                f"block_ms ({self.block_ms}) must be below the Redis socket timeout "
                f"({self.socket_timeout_s} s), or every idle read would time out"
            )
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.max_entry_bytes, self.max_metrics_depth)

    def redacted(self) -> dict[str, object]:
        """Settings for the start-up log line, as JSON values (a path is its text), with
        passwords in URLs hidden."""
        values = self.model_dump(mode="json")
        values["redis_url"] = redact_url(self.redis_url)
        values["mongodb_uri"] = redact_url(self.mongodb_uri)
        return values


def check_url(url: str, schemes: tuple[str, ...]) -> None:
    """Raise ``ValueError`` (naming what is wrong, never the password) unless ``url`` has
    one of ``schemes`` and, if it has a port, a number there."""
    accepted = ", ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ValueError(f"not a URL ({error}); expected {accepted}") from None
    if parts.scheme.lower() not in schemes or not url[len(parts.scheme) :].startswith("://"):
        shown = f"{parts.scheme}://" if parts.scheme else repr(redact_url(url))
        raise ValueError(f"unsupported scheme {shown}: expected {accepted}")
    if is_sentinel_url(url):
        parse_sentinel_url(url)  # its sentinels, service and database, each checked
        return
    if "," in parts.netloc:
        return  # a MongoDB seed list (h1:27017,h2:27017): pymongo checks each port
    try:
        parts.port  # noqa: B018 (parsing the port raises on a bad one)
    except ValueError:
        raise ValueError(f"bad port in {redact_url(url)}: expected a number 0-65535") from None


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name a typo most likely meant (an environment variable, a flag), if any
    is close enough."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``FLORIST_*`` variable that is no setting (a typo, most likely),
    with the nearest setting's variable when one is close."""
    environ = os.environ if environ is None else environ
    known = {env_name(name) for name in Settings.model_fields}
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if upper.startswith(OTHER_VARIABLE_PREFIXES):
            continue
        close = closest(upper, known)
        hint = f" (did you mean {close}?)" if close else ""
        warnings.append(f"ignoring unknown environment variable {name}{hint}")
    return warnings


def redact_url(url: str) -> str:
    """``scheme://user:secret@host`` becomes ``scheme://user:***@host``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
