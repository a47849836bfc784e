"""``florist-worker replay``: re-apply stream history to the job documents.

::

    florist-worker replay [--from ID|TIME] [--to ID|TIME] [--job JOB_ID] [--dry-run]

Prints one line per outcome. Exit codes: 0 done, 1 Redis or MongoDB stayed
unavailable (the message names the ``--from`` to resume with) or refused the
configuration, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Final

import redis

from worker.commands.options import (
    EXIT_OK,
    Failure,
    UsageError,
    add_settings_flags,
    command,
    settings_from,
)
from worker.connections import connect_database, connect_redis
from worker.outcomes import Outcome
from worker.progress import progress_bar
from worker.redis_failures import command_line
from worker.replay import (
    DEFAULT_OUTAGE_TIMEOUT_S,
    PAGE_SIZE,
    InvalidBound,
    ReplayInterrupted,
    ReplayReport,
    estimate_total,
    parse_bound,
    run_replay,
)
from worker.settings import redact_url
from worker.store import MongoJobStore

MAX_PART: Final = 2**64 - 1  # the largest part of a stream entry ID
SETTINGS = (
    "redis_url",
    "redis_cluster",
    "mongodb_uri",
    "mongodb_db",
    "stream",
    "log_level",
    "log_format",
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="re-apply events from the stream's history (idempotent)",
        description="Re-apply the events stream's entries between --from and --to to the "
        "job documents, with the worker's own guarded updates: what a document already "
        "holds counts as duplicate, so replaying twice changes nothing. Reads with XRANGE "
        "outside the consumer group (nothing is acknowledged or claimed). Invalid entries "
        "are counted, not dead-lettered. A Redis that does not answer at start is an error at "
        "once; if MongoDB or Redis then stays unavailable longer than --outage-timeout, "
        "replay stops and prints the --from to resume with. Exit codes: "
        "0 done, 1 a service stayed unavailable or refused, 2 bad arguments or settings.",
    )
    parser.add_argument(
        "--from",
        dest="start",
        default="-",
        metavar="ID|TIME",
        help="first entry: a stream ID (1700000000000-0), milliseconds, or an ISO-8601 "
        "time (naive means UTC); default: the oldest entry",
    )
    parser.add_argument(
        "--to",
        dest="end",
        default="+",
        metavar="ID|TIME",
        help="last entry, inclusive, in the same forms; default: the newest entry",
    )
    parser.add_argument("--job", dest="job_id", metavar="JOB_ID", help="replay only this job")
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would change; write nothing"
    )
    parser.add_argument(
        "--page-size",
        type=int,
        default=PAGE_SIZE,
        metavar="N",
        help=f"entries per XRANGE (default {PAGE_SIZE})",
    )
    parser.add_argument(
        "--outage-timeout",
        type=float,
        default=DEFAULT_OUTAGE_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to retry through an outage before stopping "
        f"(default {DEFAULT_OUTAGE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    add_settings_flags(parser, fields=SETTINGS)
    parser.set_defaults(handler=handle)


@command("replay")
def handle(arguments: argparse.Namespace) -> int:
    try:
        start, end = parse_bound(arguments.start), parse_bound(arguments.end)
    except InvalidBound as error:
        raise UsageError(str(error)) from None
    if _reach(start, last=False) > _reach(end, last=True):
        raise UsageError(
            f"--from {arguments.start} comes after --to {arguments.end}: nothing between them "
            "(swap them?)"
        )
    if arguments.page_size < 1:
        raise UsageError(f"--page-size must be at least 1, got {arguments.page_size}")
    if arguments.outage_timeout < 0:
        raise UsageError(f"--outage-timeout must be 0 or more, got {arguments.outage_timeout}")
    settings = settings_from(arguments)
    client = connect_redis(settings)
    began = time.monotonic()
    try:
        bar = None
        if not arguments.no_progress and sys.stderr.isatty():
            bar = progress_bar(estimate_total(client, settings.stream, start, end), label="replay")
        try:
            report = run_replay(
                client,
                MongoJobStore(connect_database(settings)),
                settings,
                start,
                end,
                dry_run=arguments.dry_run,
                job_id=arguments.job_id,
                progress=bar.update if bar is not None else None,
                page_size=arguments.page_size,
                outage_timeout_s=arguments.outage_timeout,
            )
        finally:
            if bar is not None:
                bar.close()
    except ReplayInterrupted as error:
        print(summary(error.report, arguments.dry_run), flush=True)  # what was done
        raise Failure(str(error)) from None
    except (redis.RedisError, OSError) as error:
        raise Failure(command_line(error, redact_url(settings.redis_url))) from None
    finally:
        client.close()
    print(summary(report, arguments.dry_run, seconds=time.monotonic() - began))
    return EXIT_OK


def _reach(bound: str, *, last: bool) -> tuple[int, int]:
    """The first (or, for an end, the ``last``) stream position an XRANGE bound from
    :func:`worker.replay.parse_bound` takes in: milliseconds alone span every sequence."""
    if bound in ("-", "+"):
        return (0, 0) if bound == "-" else (MAX_PART, MAX_PART)
    milliseconds, _dash, sequence = bound.partition("-")
    if sequence:
        return (int(milliseconds), int(sequence))
    return (int(milliseconds), MAX_PART if last else 0)


def summary(report: ReplayReport, dry_run: bool, seconds: float | None = None) -> str:
    """One line per outcome that occurred, in the contract's order, then the totals."""
    lines = []
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"{'dry run: ' if dry_run else ''}read {report.read} entries{took}")
    if report.skipped:
        lines.append(f"skipped {report.skipped} entries of other jobs")
    width = max((len(outcome.value) for outcome in Outcome), default=0)
    for outcome in Outcome:
        count = report.counts.get(outcome.value, 0)
        if count:
            lines.append(f"  {outcome.value:<{width}}  {count}")
    applied = sum(report.applied_by_job.values())
    verb = "would change" if dry_run else "changed"
    jobs = len(report.applied_by_job)
    lines.append(f"{verb} {jobs} job(s) with {applied} event(s)")
    if dry_run:
        lines.append("nothing was written (--dry-run)")
    return "\n".join(lines)
