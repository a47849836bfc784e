"""The heartbeat: a small file the running worker refreshes, read by ``healthcheck``.

A file, not a Redis key, because the container's HEALTHCHECK must judge this very
process: it is fresh only while the consume loop turns, and it records whether
Redis and MongoDB answered at the last check. A hung loop stops refreshing it and
turns unhealthy once it is older than the TTL.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Heartbeat:
    consumer: str
    at: float
    redis_ok: bool
    mongodb_ok: bool
    pid: int
    events: int = 0  # entries handled since the worker started
    mongodb_round_trips: int = 0  # MongoDB round trips made to apply them

    @property
    def round_trips_per_1000_events(self) -> float | None:
        return None if not self.events else 1000 * self.mongodb_round_trips / self.events


def write_heartbeat(
    path: Path,
    consumer: str,
    *,
    redis_ok: bool,
    mongodb_ok: bool,
    events: int = 0,
    mongodb_round_trips: int = 0,
) -> None:
    """Replace the file atomically, so a reader never sees half a heartbeat."""
    beat = Heartbeat(
        consumer, time.time(), redis_ok, mongodb_ok, os.getpid(), events, mongodb_round_trips
    )
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(asdict(beat)))
    partial.replace(path)


def remove_heartbeat(path: Path) -> None:
    path.unlink(missing_ok=True)


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The last heartbeat written at ``path``, or ``None``."""
    try:
        return Heartbeat(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def check_heartbeat(path: Path, max_age_s: float) -> tuple[bool, str]:
    """``(healthy, one-line reason)`` for the healthcheck command."""
    try:
        beat = Heartbeat(**json.loads(path.read_text()))
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: the worker is not running"
    except (ValueError, TypeError) as error:
        return False, f"unreadable heartbeat at {path}: {error}"
    age = time.time() - beat.at
    if age > max_age_s:
        return False, f"heartbeat is {age:.0f} s old (limit {max_age_s:.0f} s): the loop is stuck"
    if not beat.redis_ok:
        return False, "Redis did not answer at the last check"
    if not beat.mongodb_ok:
        return False, "MongoDB did not answer at the last check"
    rate = beat.round_trips_per_1000_events
    trips = "" if rate is None else f"; {rate:.1f} MongoDB round trips per 1,000 events"
    return True, f"healthy: {beat.consumer} beat {age:.1f} s ago{trips}"
