"""``florist-worker run``: consume the events stream until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
from typing import Any

import structlog

from worker.commands.options import add_settings_flags, settings_from
from worker.connections import connect_database, connect_redis
from worker.consumer import Worker
from worker.logs import configure_logging
from worker.stream import DeadStreamMisconfigured

log = structlog.get_logger(__name__)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="consume the events stream and apply events to job documents",
        description="Consume the events stream as one member of the consumer group, "
        "apply each event to its job document, and acknowledge it. Stops cleanly on "
        "SIGTERM or SIGINT after the batch in hand.",
    )
    add_settings_flags(parser)
    parser.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    configure_logging(settings.log_level, settings.log_format)
    observers = []
    if settings.metrics_port is not None:
        from worker.prometheus import start_exporter

        observers.append(start_exporter(settings))
    worker = Worker(
        connect_redis(settings), connect_database(settings), settings, observers=observers
    )
    try:
        worker.run()
    except DeadStreamMisconfigured as error:
        log.error("cannot start", error=str(error))
        return 2
    return 0
