"""``florist-worker run``: consume the events stream until SIGTERM or SIGINT.

At start it checks Redis and MongoDB and logs each as reachable or not; while the
worker runs, :class:`ServiceWatch` keeps checking them (every heartbeat interval) and
logs an outage once when it begins, again every :data:`REMIND_S` while it lasts, and
once when it ends, so that an idle worker whose MongoDB is down says so in its logs
(the consume loop itself only meets MongoDB when an event arrives).

With ``--mongodb-uri memory://`` the database lives in this process alone; ``--jobs
FILE`` fills it at start with Job documents (:mod:`worker.jobsfile`), so that events
published by other processes (by job id or uuid) find their job. Each loaded job is
logged with the uuids it is served under.

Before it consumes, it claims its consumer name (:mod:`worker.presence`): a name that a
live worker holds is refused.

Exit codes: 0 after a clean stop, 1 when the configuration cannot work (the
dead-letter key holds something else than a stream, MongoDB settings the worker
refuses, the metrics port taken, a consumer name another live worker holds), 2 for bad
flags, settings or jobs file.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import redis
import structlog
from pymongo.database import Database
from pymongo.errors import PyMongoError

from worker import mongo_failures, redis_failures
from worker.commands.options import (
    EXIT_OK,
    Failure,
    UsageError,
    add_settings_flags,
    command,
    settings_from,
)
from worker.connections import MEMORY_URI, connect_database, connect_redis
from worker.consumer import Worker
from worker.entities import Job
from worker.jobsfile import JobsFileError, ServedJob, current_jobs, load_jobs, read_jobs
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
        "misconfigured, 2 bad flags, settings or jobs file.",
    )
    parser.add_argument(
        "--jobs",
        type=Path,
        metavar="FILE",
        help="with --mongodb-uri memory://: load these Job documents (a JSON array or JSON "
        "lines, FLorist-shaped, e.g. worker/samples/jobs.json) into the in-memory database "
        "at start, so that events other processes publish for them are applied",
    )
    add_settings_flags(parser)
    parser.set_defaults(handler=handle)


@command("run", warn_environment=False)
def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    jobs = jobs_from(arguments.jobs, settings)  # checked before anything connects
    for warning in unknown_variables():
        log.warning(warning)
    observers = []
    if settings.metrics_port is not None:
        from worker.prometheus import start_exporter

        try:
            observers.append(start_exporter(settings))
        except OSError as error:
            raise Failure(
                f"cannot serve /metrics on port {settings.metrics_port} (FLORIST_METRICS_PORT "
                f"or --metrics-port): {error.strerror or error}"
            ) from None
    database = connect_database(settings)
    served = load_jobs(database, jobs)
    _log_served(served, arguments.jobs)
    worker = Worker(connect_redis(settings), database, settings, observers=observers)
    presence = Presence(worker.redis, settings)
    presence.claim()
    try:
        _consume(worker, settings, presence)
    finally:
        presence.stop()
    if presence.lost:
        raise ConsumerTaken(f"consumer name {settings.consumer!r} is held by another worker now")
    _log_final(database, served)
    return EXIT_OK


def _log_served(served: Sequence[ServedJob], path: Path | None) -> None:
    for job in served:
        log.info(
            "serving a job of the jobs file",
            file=str(path),
            job_id=job.job_id,
            status=job.status,
            server_uuid=job.server_uuid,
            client_uuids=list(job.client_uuids),
        )


def _log_final(database: Database[Any], served: Sequence[ServedJob]) -> None:
    """The in-memory database ends with the process: log what became of its jobs."""
    for final in current_jobs(database, served):
        log.info(
            "a job of the jobs file at exit",
            job_id=final.id,
            status=final.status.value,
            server_metrics=final.server_metrics,
            client_metrics=[info.metrics for info in final.clients_info or ()],
        )


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


def jobs_from(path: Path | None, settings: Settings) -> list[Job]:
    """The jobs of ``--jobs`` (none without it); a bad file, or a database that is not
    the in-memory one, is a usage error."""
    if path is None:
        return []
    if not settings.mongodb_uri.startswith(MEMORY_URI):
        raise UsageError(
            f"--jobs loads jobs into the in-memory database: add --mongodb-uri {MEMORY_URI} "
            "(with a real MongoDB, FLorist's API creates the jobs)"
        )
    try:
        return read_jobs(path)
    except JobsFileError as error:
        raise UsageError(str(error)) from None


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
    except PyMongoError as error:
        return mongo_failures.describe(error)
    except Exception as error:  # noqa: BLE001 (any failure of a check means "unreachable")
        return redis_failures.describe(error)
    return None
