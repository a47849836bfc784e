"""``florist-worker stats``: the stream, the group's lag and pending entries, dead letters,
and the IN_PROGRESS jobs with the silence of their server and clients.

::

    florist-worker stats                 # a short readable block
    florist-worker stats --json          # the same as one JSON object
    florist-worker stats --watch [SECONDS]   # refresh every SECONDS (default 2) until Ctrl-C

Read-only. Exit 0 (also when the stream or group does not exist yet, when MongoDB does
not answer within :data:`worker.stats.MONGODB_TIMEOUT_S`: one line says so and the Redis
part is shown); 1 when Redis does not answer (``--watch`` keeps trying instead); 2 for
bad flags or settings; 130 on Ctrl-C, which is how ``--watch`` ends. ``--watch`` redraws
the screen when stdout is a terminal and appends otherwise (JSON: one object per line).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

import redis

from worker.commands.options import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_settings_flags,
    command,
    error_line,
    settings_from,
)
from worker.connections import connect_database, connect_redis
from worker.errors import Misconfigured
from worker.redis_failures import command_line
from worker.settings import Settings, redact_url
from worker.stats import (
    MONGODB_TIMEOUT_S,
    JobsStats,
    collect_jobs,
    collect_stats,
    database_label,
    render_stats,
)

DEFAULT_WATCH_S = 2.0
CLEAR_SCREEN = "\033[H\033[2J"
SETTINGS_FLAGS = (
    "redis_url",
    "redis_cluster",
    "stream",
    "group",
    "dead_stream",
    "socket_timeout_s",
    "mongodb_uri",
    "mongodb_db",
    "stale_after_s",
    "max_entry_ahead_s",
    "log_level",
    "log_format",
)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("the refresh interval must be above 0 seconds")
    return seconds


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="show stream length, group lag, pending entries, dead letters and silent jobs",
        description="Show the events stream (length, first and last entry: the replay "
        "window), the consumer group (lag counted after its last-delivered-id, entries "
        "read, pending entries and the oldest one's idle time, each consumer), entries gone "
        "unread (trimmed before the group read them) and an entry ID too far ahead of "
        "Redis's clock, dead letters by reason, and the IN_PROGRESS jobs "
        "from MongoDB with the age of the last event from their server and each client, "
        "flagging servers silent for half of --stale-after-s or more and over it. Read-only. "
        f"MongoDB gets {MONGODB_TIMEOUT_S:g} s; when it does not answer, one line says so. "
        "Exit codes: 0 shown (also without MongoDB), 1 Redis did not answer, 2 bad flags "
        "or settings, 130 interrupted (how --watch ends).",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=_positive_seconds,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C (exit 130); "
        "redraws on a terminal, appends otherwise",
    )
    add_settings_flags(parser, fields=SETTINGS_FLAGS)
    parser.set_defaults(handler=handle)


@command("stats")
def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    client = connect_redis(settings)
    try:
        database = open_jobs_database(settings)
        try:
            if arguments.watch is None:
                return show_once(client, settings, as_json=arguments.json, database=database)
            return watch(
                client, settings, arguments.watch, as_json=arguments.json, database=database
            )
        finally:
            close_database(database)
    finally:
        client.close()


def open_jobs_database(settings: Settings) -> Any:
    """The database holding the jobs, or a :class:`JobsStats` saying why there is none (a
    client that cannot be built: the in-memory extra missing, an SRV name that does not
    resolve). Nothing here waits for MongoDB; a URI it refuses is a usage error (exit 2)."""
    try:
        return connect_database(settings)
    except Misconfigured as error:
        return JobsStats.unavailable(database_label(settings), str(error))


def close_database(database: Any) -> None:
    client = getattr(database, "client", None)
    close = getattr(client, "close", None)
    if callable(close):
        close()


def _snapshot(
    client: redis.Redis,
    settings: Settings,
    *,
    as_json: bool,
    indent: int | None,
    database: Any = None,
) -> str:
    stats = collect_stats(client, settings)
    if isinstance(database, JobsStats):
        stats = replace(stats, jobs=database)
    elif database is not None:
        stats = replace(stats, jobs=collect_jobs(client, database, settings))
    return stats.to_json(indent=indent) if as_json else render_stats(stats)


def _unavailable(settings: Settings, error: redis.RedisError) -> str:
    return error_line("stats", command_line(error, f"at {redact_url(settings.redis_url)}"))


def show_once(
    client: redis.Redis,
    settings: Settings,
    *,
    as_json: bool,
    out: TextIO | None = None,
    database: Any = None,
) -> int:
    """One snapshot; with ``database`` (or a :class:`JobsStats` saying why there is none)
    the IN_PROGRESS jobs too."""
    out = out or sys.stdout
    try:
        text = _snapshot(client, settings, as_json=as_json, indent=2, database=database)
    except redis.RedisError as error:
        print(_unavailable(settings, error), file=sys.stderr)
        return EXIT_FAILURE
    print(text, file=out)
    return EXIT_OK


def watch(
    client: redis.Redis,
    settings: Settings,
    interval_s: float,
    *,
    as_json: bool,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    database: Any = None,
) -> int:
    """Refresh until Ctrl-C (exit 130). On a terminal each snapshot redraws the screen;
    elsewhere snapshots are appended: JSON one object per line (for piping), text
    separated by blank lines. Redis errors go to stderr and the watch goes on."""
    out = out or sys.stdout
    redraw = out.isatty()
    indent = 2 if redraw else None
    try:
        while True:
            try:
                text = _snapshot(
                    client, settings, as_json=as_json, indent=indent, database=database
                )
            except redis.RedisError as error:
                # On stderr, so a JSON-lines reader of stdout never sees it.
                print(_unavailable(settings, error), file=sys.stderr, flush=True)
            else:
                if redraw:
                    out.write(CLEAR_SCREEN)
                print(text, file=out, end="\n" if as_json or redraw else "\n\n", flush=True)
            sleep(interval_s)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
