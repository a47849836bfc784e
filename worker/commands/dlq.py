"""``florist-worker dlq``: inspect, requeue and drop dead letters.

::

    florist-worker dlq list [--reason R] [--job JOB_ID] [--limit N]
    florist-worker dlq show ID [--json]
    florist-worker dlq requeue (ID... | --all | --reason R)
    florist-worker dlq drop (ID... | --all | --reason R) [--yes]

``requeue`` moves entries to the end of the events stream with ``origin_id`` kept, so
the worker's guards still compare their first position. ``drop`` deletes for good;
dropping by ``--all`` or ``--reason`` needs ``--yes``. Exit codes: 0 done, 1 Redis
error or an ID that is not in the dead-letter stream, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from worker import deadletter
from worker.commands.options import (
    EXIT_OK,
    Failure,
    UsageError,
    add_settings_flags,
    command,
    settings_from,
)
from worker.connections import connect_redis
from worker.deadletter import DeadLetterEntry
from worker.outcomes import DEAD_AT_ONCE, RETRYABLE
from worker.positions import InvalidStreamId
from worker.redis_failures import command_line
from worker.settings import Settings, redact_url

DEFAULT_LIMIT = 100

SETTINGS = ("redis_url", "redis_cluster", "stream", "dead_stream", "log_level", "log_format")
COLUMNS = ("ID", "REASON", "JOB", "TYPE", "DELIVERIES", "AGE")
# A dead letter's dead_reason: an outcome that dead-letters at once or after its retries.
REASONS = tuple(sorted(outcome.value for outcome in DEAD_AT_ONCE | RETRYABLE))


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list, show, requeue or drop dead letters",
        description="Work with the dead-letter stream: entries that were invalid, of a "
        "newer schema version, whose job or client stayed unknown, or that MongoDB kept "
        "refusing (store_error). Exit codes: 0 done, 1 Redis error or an ID not found, 2 "
        "bad arguments or settings.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=False)
    common = argparse.ArgumentParser(add_help=False)
    add_settings_flags(common, fields=SETTINGS)
    for add in (_add_list, _add_show, _add_requeue, _add_drop):
        add(actions, common).set_defaults(handler=handle)


def _add_list(
    actions: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    listing: argparse.ArgumentParser = actions.add_parser(
        "list",
        parents=[common],
        help="a table of dead letters, oldest first",
        description="List dead letters, oldest first: ID, reason, job, type, deliveries "
        "and age, then how many were shown and how many there are.",
    )
    _add_reason(listing, "only dead letters with this dead_reason")
    listing.add_argument("--job", dest="job_id", metavar="JOB_ID", help="only this job")
    listing.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"at most this many rows; 0 for all (default {DEFAULT_LIMIT})",
    )
    return listing


def _add_show(
    actions: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    show: argparse.ArgumentParser = actions.add_parser(
        "show",
        parents=[common],
        help="every field of one dead letter",
        description="Print every field of one dead letter: the original entry's fields "
        "and dead_reason, dead_error, origin_id, origin_stream, deliveries, dead_at.",
    )
    show.add_argument("id", metavar="ID", help="the dead letter's entry ID")
    show.add_argument("--json", action="store_true", help="print the fields as a JSON object")
    return show


def _add_requeue(
    actions: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    requeue: argparse.ArgumentParser = actions.add_parser(
        "requeue",
        parents=[common],
        help="put dead letters back on the events stream (origin_id kept)",
        description="Move dead letters to the end of the events stream with origin_id "
        "kept (bookkeeping fields removed) and delete them from the dead-letter stream, in "
        "one MULTI/EXEC. Exit 1 if a given ID is not in the dead-letter stream.",
    )
    _add_selection(requeue)
    requeue.add_argument(
        "--vouch-origin",
        action="store_true",
        help="also requeue letters that claim an origin_id no requeue record vouched for "
        "(entries requeued by a version before the records), at that claimed first "
        "position; without it they are left in place with a warning",
    )
    return requeue


def _add_drop(
    actions: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    drop: argparse.ArgumentParser = actions.add_parser(
        "drop",
        parents=[common],
        help="delete dead letters for good",
        description="Delete dead letters from the dead-letter stream for good. Dropping "
        "by --all or --reason needs --yes; by ID it does not.",
    )
    _add_selection(drop)
    drop.add_argument("--yes", action="store_true", help="confirm dropping by --all or --reason")
    return drop


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry IDs")
    parser.add_argument("--all", action="store_true", help="every dead letter")
    _add_reason(parser, "every dead letter with this dead_reason")


def _add_reason(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--reason", choices=REASONS, metavar="REASON", help=f"{help_text}: {', '.join(REASONS)}"
    )


@command("dlq")
def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    client = connect_redis(settings)
    try:
        output = _ACTIONS[arguments.action](client, settings, arguments)
    except (redis.RedisError, OSError) as error:
        raise Failure(command_line(error, redact_url(settings.redis_url))) from None
    finally:
        client.close()
    if output:
        print(output)
    return EXIT_OK


def _list(client: redis.Redis, settings: Settings, arguments: argparse.Namespace) -> str:
    if arguments.limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {arguments.limit}")
    letters = deadletter.list_dead_letters(
        client,
        reason=arguments.reason,
        job_id=arguments.job_id,
        limit=arguments.limit or None,
        settings=settings,
    )
    total = int(client.xlen(settings.dead_stream))
    if not letters:
        return f"no dead letters{_filters(arguments)} in {settings.dead_stream} ({total} in all)"
    table = format_table(letters, datetime.now(UTC))
    return f"{table}\n{len(letters)} shown{_filters(arguments)}; {total} in {settings.dead_stream}"


def _filters(arguments: argparse.Namespace) -> str:
    parts = [f"reason {arguments.reason}"] if arguments.reason else []
    parts += [f"job {arguments.job_id}"] if arguments.job_id else []
    return f" ({', '.join(parts)})" if parts else ""


def format_table(letters: Sequence[DeadLetterEntry], now: datetime) -> str:
    """Aligned columns: ID, REASON, JOB, TYPE, DELIVERIES, AGE."""
    rows = [COLUMNS] + [
        (
            letter.id,
            letter.reason or "-",
            letter.job_id or "-",
            letter.type or "-",
            str(letter.deliveries) if letter.deliveries is not None else "-",
            format_age(letter.age(now)),
        )
        for letter in letters
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_age(age: timedelta | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: the largest whole unit."""
    if age is None:
        return "-"
    seconds = max(int(age.total_seconds()), 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _show(client: redis.Redis, settings: Settings, arguments: argparse.Namespace) -> str:
    try:
        letter = deadletter.get_dead_letter(client, arguments.id, settings=settings)
    except InvalidStreamId as error:
        raise UsageError(str(error)) from None
    if letter is None:
        raise Failure(f"no dead letter {arguments.id} in {settings.dead_stream}")
    fields = letter.fields()
    if arguments.json:
        return json.dumps({"id": letter.id, "fields": fields}, indent=2)
    width = max(len(name) for name in ["id", *fields])
    lines = [f"{'id':<{width}}  {letter.id}"]
    lines += [f"{name:<{width}}  {value}" for name, value in fields.items()]
    return "\n".join(lines)


def _selection(
    client: redis.Redis, settings: Settings, arguments: argparse.Namespace, verb: str
) -> tuple[list[str] | None, list[str]]:
    """The IDs to act on (``None``: all, filtered by --reason) and the IDs not found."""
    if arguments.ids and arguments.all:
        raise UsageError(f"give IDs or --all, not both, to {verb}")
    if not arguments.ids and not arguments.all and arguments.reason is None:
        raise UsageError(f"say what to {verb}: IDs, --all or --reason R")
    if not arguments.ids:
        return None, []
    try:
        found, missing = deadletter.find_dead_letters(client, arguments.ids, settings=settings)
    except InvalidStreamId as error:
        raise UsageError(str(error)) from None
    return [letter.id for letter in found], missing


def _requeue(client: redis.Redis, settings: Settings, arguments: argparse.Namespace) -> str:
    ids, missing = _selection(client, settings, arguments, "requeue")
    moved = deadletter.requeue(
        client,
        ids,
        reason=arguments.reason,
        settings=settings,
        vouch_claimed_origin=arguments.vouch_origin,
    )
    return _report(f"requeued {moved} dead letter(s) to {settings.stream}", missing, settings)


def _drop(client: redis.Redis, settings: Settings, arguments: argparse.Namespace) -> str:
    ids, missing = _selection(client, settings, arguments, "drop")
    if ids is None and not arguments.yes:
        what = "every dead letter" if arguments.reason is None else f"{arguments.reason} ones"
        raise UsageError(f"dropping {what} deletes them for good: add --yes")
    dropped = deadletter.drop(client, ids, reason=arguments.reason, settings=settings)
    return _report(f"dropped {dropped} dead letter(s)", missing, settings)


def _report(done: str, missing: Sequence[str], settings: Settings) -> str:
    if missing:
        print(done)
        raise Failure(f"not in {settings.dead_stream}: {', '.join(missing)}")
    return done


_ACTIONS = {"list": _list, "show": _show, "requeue": _requeue, "drop": _drop}
