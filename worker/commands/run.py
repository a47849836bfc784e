"""``florist-worker run``: consume the events stream until SIGTERM or SIGINT.

At start it checks Redis and MongoDB and logs each as reachable or not; while the
worker runs, :class:`ServiceWatch` keeps checking them (every heartbeat interval) and
logs an outage once when it begins, again every :data:`REMIND_S` while it lasts, and
once when it ends, so that an idle worker whose MongoDB is down says so in its logs
(the consume loop itself only meets MongoDB when an event arrives).

Before it consumes, it claims its consumer name (:mod:`worker.presence`): a name that a
live worker holds is refused.

Exit codes: 0 after a clean stop, 1 when the configuration cannot work (the
dead-letter key holds something else than a stream, MongoDB settings the worker
refuses, a consumer name another live worker holds), 2 for bad flags or settings.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import redis
import structlog

from worker.commands.options import EXIT_OK, add_settings_flags, command, settings_from
from worker.connections import connect_database, connect_redis
from worker.consumer import Worker
from worker.logs import configure_logging
from worker.presence import ConsumerTaken, Presence
from worker.settings import Settings, redact_url, unknown_variables
from worker.store import StoreUnavailable

log = structlog.get_logger(__name__)

REMIND_S: Final = 60.0  # while a service stays down, repeat the error this often


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="consume the events stream and apply events to job documents",
        description="Consume the events stream as one member of the consumer group, "
        "apply each event to its job document, and acknowledge it. Stops cleanly on "
        "SIGTERM or SIGINT after the batch in hand. Exit codes: 0 stopped, 1 "
        "misconfigured, 2 bad flags or settings.",
    )
    add_settings_flags(parser)
    parser.set_defaults(handler=handle)


@command("run", warn_environment=False)
def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    configure_logging(settings.log_level, settings.log_format)
    for warning in unknown_variables():
        log.warning(warning)
    observers = []
    if settings.metrics_port is not None:
        from worker.prometheus import start_exporter

        observers.append(start_exporter(settings))
    worker = Worker(
        connect_redis(settings), connect_database(settings), settings, observers=observers
    )
    presence = Presence(worker.redis, settings)
    presence.claim()
    try:
        _consume(worker, settings, presence)
    finally:
        presence.stop()
    if presence.lost:
        raise ConsumerTaken(f"consumer name {settings.consumer!r} is held by another worker now")
    return EXIT_OK


def _consume(worker: Worker, settings: Settings, presence: Presence) -> None:
    """Run the worker, its name held and its services watched, until it stops."""
    presence.start(on_lost=worker.stop)
    watch = ServiceWatch(
        {
            "redis": (redact_url(settings.redis_url), _redis_check(worker.redis)),
            "mongodb": (redact_url(settings.mongodb_uri), worker.store.ping),
        },
        interval_s=settings.heartbeat_interval_s,
    )
    watch.start()
    try:
        worker.run()
    finally:
        watch.stop()


def _redis_check(client: redis.Redis) -> Callable[[], None]:
    def ping() -> None:
        client.ping()

    return ping


class ServiceWatch:
    """Checks services in a thread of its own and logs when each goes down or comes back.

    ``services`` maps a name (``redis``, ``mongodb``) to its redacted address and a
    check that raises when the service does not answer. The first round is logged
    either way ("mongodb reachable" / "mongodb unreachable, retrying"); after that
    only changes are logged, plus a reminder every ``remind_s`` while one is down.
    """

    def __init__(
        self,
        services: dict[str, tuple[str, Callable[[], None]]],
        *,
        interval_s: float,
        remind_s: float = REMIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = services
        self.interval_s = interval_s
        self.remind_s = remind_s
        self._clock = clock
        self._down_since: dict[str, float] = {}
        self._reminded: dict[str, float] = {}
        self._checked = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="service-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.check_once()
            self._stopping.wait(self.interval_s)

    def check_once(self) -> dict[str, bool]:
        """Check every service once and log what changed; ``{name: reachable}``."""
        first = not self._checked
        self._checked = True
        results = {}
        for name, (address, check) in self.services.items():
            if self._stopping.is_set() and not first:
                break
            problem = _problem(check)
            results[name] = problem is None
            self._record(name, address, problem, first)
        return results

    def _record(self, name: str, address: str, problem: str | None, first: bool) -> None:
        now = self._clock()
        if problem is None:
            if name in self._down_since:
                down_s = now - self._down_since.pop(name)
                self._reminded.pop(name, None)
                log.warning(f"{name} reachable again", address=address, down_s=round(down_s, 1))
            elif first:
                log.info(f"{name} reachable", address=address)
            return
        if name not in self._down_since:
            self._down_since[name] = self._reminded[name] = now
            log.error(f"{name} unreachable, retrying", address=address, error=problem)
        elif now - self._reminded[name] >= self.remind_s:
            self._reminded[name] = now
            log.error(
                f"{name} still unreachable, retrying",
                address=address,
                error=problem,
                down_s=round(now - self._down_since[name], 1),
            )


def _problem(check: Callable[[], None]) -> str | None:
    """None when ``check`` passes, else one line saying why not."""
    try:
        check()
    except StoreUnavailable as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 (any failure of a check means "unreachable")
        return f"{type(error).__name__}: {error}"
    return None
