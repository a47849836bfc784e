"""``florist-worker emit``: publish one v1 event from the shell.

::

    florist-worker emit server-metrics (--job JOB_ID | --server-uuid UUID) --metrics JSON
    florist-worker emit client-metrics [--job JOB_ID] --client-uuid UUID --metrics JSON
    florist-worker emit status (--job JOB_ID | --server-uuid UUID) --status FINISHED_WITH_ERROR
        [--error-message TEXT]
    florist-worker emit raw --fields '{"v": "1", "type": "...", ...}'

A job is named as the wire format names it: by ``job_id``, by the FL server's uuid
(``server_uuid``, the job's ``server_uuid``), or, for a client's metrics, by the client's
uuid alone; give both and the worker checks that they agree.

``--metrics -`` (or ``--fields -``) reads the JSON from standard input. Prints the new
entry's ID. The event is validated first: bad JSON, a bad status or any other invalid
argument prints one line on stderr and exits with 2, writing nothing; a Redis error
exits with 1 (see :func:`worker.commands.options.command`). ``raw`` writes the field map
as given (for testing the dead-letter path).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import redis

from worker.commands.options import (
    EXIT_OK,
    Failure,
    UsageError,
    add_settings_flags,
    command,
    settings_from,
)
from worker.entities import JobStatus
from worker.producer import DEFAULT_MAXLEN, EventPublisher, InvalidEvent
from worker.redis_failures import command_line
from worker.settings import redact_url

_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "emit",
        help="publish one event (server metrics, client metrics, a status) to the stream",
        description="Publish one v1 event to the events stream and print its entry ID. "
        "The event is validated first: a bad argument exits 2 and writes nothing; a Redis "
        "error exits 1.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=False)
    common, job, by_server = _common_flags(), _job_flag(), _server_uuid_flag()
    _add_server_metrics(kinds, [common, job, by_server])
    _add_client_metrics(kinds, [common, job])
    _add_status(kinds, [common, job, by_server])
    _add_raw(kinds, [common])


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_settings_flags(common, ["redis_url", "redis_cluster", "stream"])
    common.add_argument(
        "--maxlen",
        type=int,
        default=DEFAULT_MAXLEN,
        help=f"approximate MAXLEN of the stream, its replay window (default: {DEFAULT_MAXLEN})",
    )
    return common


def _job_flag() -> argparse.ArgumentParser:
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--job", metavar="JOB_ID", help="the Job document's _id")
    return job


def _server_uuid_flag() -> argparse.ArgumentParser:
    by_server = argparse.ArgumentParser(add_help=False)
    by_server.add_argument(
        "--server-uuid",
        metavar="UUID",
        help="the FL server's uuid (Job.server_uuid): names the job instead of, or with, --job",
    )
    return by_server


# Each kind's aliases are the event's type, as the stream and the contract name it.


def _add_server_metrics(
    kinds: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]
) -> None:
    server = kinds.add_parser(
        "server-metrics",
        aliases=["server.metrics"],
        parents=parents,
        help="the FL server's whole metrics snapshot",
        description="Publish a server.metrics event: the FL server's whole current metrics "
        "snapshot. A snapshot with a top-level fit_end finishes the job.",
    )
    server.add_argument("--metrics", required=True, help="JSON object, or - for stdin")
    server.set_defaults(handler=handle)


def _add_client_metrics(
    kinds: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]
) -> None:
    client = kinds.add_parser(
        "client-metrics",
        aliases=["client.metrics"],
        parents=parents,
        help="one FL client's whole metrics snapshot",
        description="Publish a client.metrics event: one FL client's whole current metrics "
        "snapshot, for the clients_info element whose uuid is --client-uuid (which names "
        "the job too when --job is not given).",
    )
    client.add_argument("--client-uuid", required=True, help="ClientInfo.uuid of the client")
    client.add_argument("--metrics", required=True, help="JSON object, or - for stdin")
    client.set_defaults(handler=handle)


def _add_status(
    kinds: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]
) -> None:
    status = kinds.add_parser(
        "status",
        aliases=["job.status"],
        parents=parents,
        help="a change of the job status",
        description="Publish a job.status event. NOT_STARTED -> IN_PROGRESS -> FINISHED_*; "
        "the first finish wins.",
    )
    status.add_argument("--status", required=True, help=f"one of {', '.join(JobStatus.list())}")
    status.add_argument("--error-message", help="why the job finished with an error")
    status.set_defaults(handler=handle)


def _add_raw(
    kinds: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]
) -> None:
    raw = kinds.add_parser(
        "raw",
        parents=parents,
        help="a field map written as given, without validation",
        description="Write a field map to the events stream as given, without validation "
        "(for testing the dead-letter path).",
    )
    raw.add_argument("--fields", required=True, help="JSON object of text fields, or - for stdin")
    raw.set_defaults(handler=handle)


@command("emit")
def handle(arguments: argparse.Namespace) -> int:
    publisher, url = _publisher(arguments)
    try:
        publish = _prepare(arguments, publisher)
        entry_id = publish()
    except InvalidEvent as error:
        raise UsageError(str(error)) from None
    except (redis.RedisError, OSError) as error:
        raise Failure(f"cannot publish: {command_line(error, redact_url(url))}") from None
    finally:
        publisher.redis.close()
    print(entry_id)
    return EXIT_OK


def _publisher(arguments: argparse.Namespace) -> tuple[EventPublisher, str]:
    """The publisher (a producer's client: short timeouts, no retries) and its URL."""
    settings = settings_from(arguments)
    if arguments.maxlen < 1:
        raise UsageError(f"--maxlen must be at least 1, got {arguments.maxlen}")
    try:
        publisher = EventPublisher.from_url(
            settings.redis_url,
            settings.stream,
            arguments.maxlen,
            timeout_s=settings.socket_timeout_s,
            cluster=settings.redis_cluster,
            sentinel_password=settings.sentinel_password,
        )
    except ValueError as error:
        raise UsageError(f"bad --redis-url: {error}") from None
    return publisher, settings.redis_url


# The event types as the stream names them, accepted for the kinds they publish.
KIND_ALIASES = {
    "server.metrics": "server-metrics",
    "client.metrics": "client-metrics",
    "job.status": "status",
}


def _prepare(arguments: argparse.Namespace, publisher: EventPublisher) -> Callable[[], str]:
    """Validate everything that can be checked offline; return the publishing call."""
    kind = KIND_ALIASES.get(arguments.kind, arguments.kind)
    if kind == "server-metrics":
        _named_job(arguments)
        metrics = _json_object(arguments.metrics, "--metrics")
        return lambda: publisher.server_metrics(
            arguments.job, metrics, server_uuid=arguments.server_uuid
        )
    if kind == "client-metrics":
        metrics = _json_object(arguments.metrics, "--metrics")
        return lambda: publisher.client_metrics(arguments.job, arguments.client_uuid, metrics)
    if kind == "status":
        _named_job(arguments)
        statuses = JobStatus.list()
        if arguments.status not in statuses:
            expected = ", ".join(statuses)
            raise UsageError(f"unknown status {arguments.status!r} (expected one of {expected})")
        return lambda: publisher.status(
            arguments.job,
            arguments.status,
            arguments.error_message,
            server_uuid=arguments.server_uuid,
        )
    fields = _json_object(arguments.fields, "--fields")
    bad = [key for key, value in fields.items() if not isinstance(value, str)]
    if bad:
        raise UsageError(f"--fields values must be JSON strings; not: {', '.join(bad)}")
    return lambda: publisher.publish_fields(fields)


def _named_job(arguments: argparse.Namespace) -> None:
    """A server's event names its job by --job, --server-uuid, or both."""
    if arguments.job is None and arguments.server_uuid is None:
        raise UsageError("name the job: --job JOB_ID or --server-uuid UUID (or both)")


def _json_object(text: str, flag: str) -> dict[str, Any]:
    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{flag} is not valid JSON: {error}") from None
    except RecursionError:
        raise UsageError(f"{flag} is nested too deeply") from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{flag} must be a JSON object, got {_JSON_KINDS.get(type(value), 'a number')}"
        )
    return value
