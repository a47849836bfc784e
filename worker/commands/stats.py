"""``florist-worker stats``: the stream, the group's lag and pending entries, dead letters.

::

    florist-worker stats                 # a short readable block
    florist-worker stats --json          # the same as one JSON object
    florist-worker stats --watch [SECONDS]   # refresh every SECONDS (default 2) until Ctrl-C

Read-only. Exit 0 (also when the stream or group does not exist yet, and on Ctrl-C
in ``--watch``); 1 when Redis does not answer (``--watch`` keeps trying instead); 2 for
bad flags or settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import redis

from worker.commands.options import (
    EXIT_FAILURE,
    EXIT_OK,
    add_settings_flags,
    command,
    error_line,
    settings_from,
)
from worker.connections import connect_redis
from worker.settings import Settings, redact_url
from worker.stats import collect_stats, render_stats

DEFAULT_WATCH_S = 2.0
CLEAR_SCREEN = "\033[H\033[2J"
SETTINGS_FLAGS = (
    "redis_url",
    "redis_cluster",
    "stream",
    "group",
    "dead_stream",
    "socket_timeout_s",
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
        help="show stream length, group lag, pending entries and dead letters",
        description="Show the events stream (length, first and last entry: the replay "
        "window), the consumer group (lag, entries read, pending entries and the oldest "
        "one's idle time, each consumer), and dead letters by reason. Read-only. Exit "
        "codes: 0 shown, 1 Redis did not answer, 2 bad flags or settings.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=_positive_seconds,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    )
    add_settings_flags(parser, fields=SETTINGS_FLAGS)
    parser.set_defaults(handler=handle)


@command("stats")
def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    client = connect_redis(settings)
    try:
        if arguments.watch is None:
            return show_once(client, settings, as_json=arguments.json)
        return watch(client, settings, arguments.watch, as_json=arguments.json)
    finally:
        client.close()


def _snapshot(client: redis.Redis, settings: Settings, *, as_json: bool, indent: int | None) -> str:
    stats = collect_stats(client, settings)
    return stats.to_json(indent=indent) if as_json else render_stats(stats)


def _unavailable(settings: Settings, error: redis.RedisError) -> str:
    return error_line("stats", f"Redis at {redact_url(settings.redis_url)} did not answer: {error}")


def show_once(
    client: redis.Redis, settings: Settings, *, as_json: bool, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    try:
        text = _snapshot(client, settings, as_json=as_json, indent=2)
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
) -> int:
    """Refresh until Ctrl-C. JSON is one object per line (for piping); text redraws the
    screen on a terminal and is separated by blank lines elsewhere. Redis errors go to
    stderr and the watch goes on."""
    out = out or sys.stdout
    redraw = not as_json and out.isatty()
    try:
        while True:
            try:
                text = _snapshot(client, settings, as_json=as_json, indent=None)
            except redis.RedisError as error:
                # On stderr, so a JSON-lines reader of stdout never sees it.
                print(_unavailable(settings, error), file=sys.stderr, flush=True)
            else:
                if redraw:
                    out.write(CLEAR_SCREEN)
                print(text, file=out, end="\n" if as_json or redraw else "\n\n", flush=True)
            sleep(interval_s)
    except KeyboardInterrupt:
        return EXIT_OK
