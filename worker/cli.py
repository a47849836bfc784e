"""The ``florist-worker`` command line: one sub-command per module in ``worker.commands``.

Each module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` (a function of the parsed arguments returning the exit code), wrapped by
:func:`worker.commands.options.command` so that every command fails the same way:

* ``florist-worker <command>: error: <one line>`` on stderr;
* exit 2 for a usage error (unknown flag, bad value, bad setting, URL or URI), exit 1
  for a runtime failure (a service did not answer or refused, a configuration the worker
  cannot run with), 130 when interrupted; 0 otherwise;
* no traceback unless ``--debug`` (or ``FLORIST_LOG_LEVEL=debug``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from worker import __version__
from worker.commands.options import Parser

COMMANDS = ("run", "replay", "dlq", "stats", "emit", "demo", "schema", "healthcheck")
DEBUG_HELP = "show the traceback of an unexpected error (so does FLORIST_LOG_LEVEL=debug)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="florist-worker",
        description="Apply FLorist training events from a Redis stream to Job documents. "
        "Exit codes: 0 done, 1 a runtime failure (a service did not answer or refused, "
        "misconfigured), 2 a usage error (bad flag, value, setting or URL).",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=False)
    for name in COMMANDS:
        module = importlib.import_module(f"worker.commands.{name}")
        module.register(subparsers)
    _add_debug_flags(parser)
    return parser


def _add_debug_flags(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after any command too (``florist-worker run --debug``); absent, it
    leaves the top-level value alone."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                child.add_argument(
                    "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
                )
                _add_debug_flags(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    code: int = arguments.handler(arguments)
    return code


if __name__ == "__main__":
    sys.exit(main())
