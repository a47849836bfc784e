"""``florist-worker schema``: the JSON Schema of a v1 entry, for other producers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.commands.options import EXIT_OK, command
from worker.events import entry_json_schema


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the v1 stream entry format",
        description="Print the JSON Schema of a v1 stream entry: the flat "
        "string fields a producer writes with XADD, per event type. For producers in other "
        "languages; the worker validates every entry against the same rules.",
    )
    parser.set_defaults(handler=handle)


@command("schema")
def handle(_arguments: argparse.Namespace) -> int:
    print(json.dumps(entry_json_schema(), indent=2))
    return EXIT_OK
