"""Every setting of the worker, read from ``FLORIST_*`` environment variables.

One model, so the command line, the README's configuration table and the code
cannot drift apart: ``--help`` and the table are generated from these fields.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.events import DEFAULT_MAX_ENTRY_BYTES, DEFAULT_MAX_METRICS_DEPTH, Limits


def default_consumer_name() -> str:
    """``<hostname>-<pid>``: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Settings with their defaults; environment variables are ``FLORIST_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLORIST_", extra="ignore", frozen=True)

    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL (rediss:// for TLS)")
    mongodb_uri: str = Field(
        "mongodb://localhost:27017",
        description="MongoDB URI; memory:// keeps an in-process database that is not saved",
    )
    mongodb_db: str = Field("florist-server", description="MongoDB database holding collection job")
    stream: str = Field("florist:events", description="events stream")
    group: str = Field("florist-worker", description="consumer group")
    consumer: str = Field(
        default_factory=default_consumer_name,
        description="consumer name (default <hostname>-<pid>)",
    )
    dead_stream: str = Field("florist:events:dead", description="dead-letter stream")
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
    batch_size: int = Field(200, ge=1, description="entries read per XREADGROUP (COUNT)")
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
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="port of the Prometheus /metrics endpoint (off if unset)"
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    log_format: str = Field("auto", description="json, console, or auto (console on a terminal)")

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
        """Settings for the start-up log line, with passwords in URLs hidden."""
        values = self.model_dump()
        values["redis_url"] = redact_url(self.redis_url)
        values["mongodb_uri"] = redact_url(self.mongodb_uri)
        return values


def redact_url(url: str) -> str:
    """``scheme://user:secret@host`` becomes ``scheme://user:***@host``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
