"""``florist-worker healthcheck``: exit 0 when this host's worker is alive, 1 otherwise.

Meant for a container HEALTHCHECK or a liveness probe. It judges the heartbeat file
the running worker refreshes (see :mod:`worker.health`): missing (not running),
older than ``--heartbeat-ttl-s`` (the loop is stuck), or recording that Redis or
MongoDB did not answer at the last check all count as unhealthy. It opens no
connection itself, so it is cheap and cannot hang. One line on stdout says why.
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands.options import add_settings_flags, command, settings_from
from worker.health import check_heartbeat

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "healthcheck",
        help="exit 0 if the worker's heartbeat is fresh and healthy, 1 otherwise",
        description="Check the heartbeat file of a running worker: exit 0 when it is "
        "fresh and Redis and MongoDB answered at the worker's last check, 1 otherwise, "
        "with a one-line reason on stdout (2 for bad flags or settings).",
    )
    add_settings_flags(parser, fields=("heartbeat_file", "heartbeat_ttl_s"))
    parser.set_defaults(handler=handle)


@command("healthcheck")
def handle(arguments: argparse.Namespace) -> int:
    settings = settings_from(arguments)
    healthy, reason = check_heartbeat(settings.heartbeat_file, settings.heartbeat_ttl_s)
    print(reason, flush=True)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY
