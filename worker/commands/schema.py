"""``florist-worker schema``: the JSON Schema of a v1 entry, for other producers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.events import entry_json_schema


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "schema", help="print the JSON Schema of the v1 stream entry format"
    )
    parser.set_defaults(handler=handle)


def handle(_arguments: argparse.Namespace) -> int:
    print(json.dumps(entry_json_schema(), indent=2))
    return 0
