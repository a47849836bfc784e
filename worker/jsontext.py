"""Strict JSON text for metrics: what the web UI can hand to ``JSON.parse``.

Python's ``json`` writes NaN and infinities as bare ``NaN``/``Infinity`` tokens, which
are not JSON; the UI cannot show ``null`` either. So they become the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` before encoding. The same holds for every
other spelling of a number no double can hold (``1e400``, an integer of 400 digits).

What is stored must also be valid UTF-8 that BSON can encode: a JSON text may escape a
lone surrogate (``"\\ud800"``), which Python decodes into a string that no UTF-8
encoder accepts; such text is written back with the escapes kept.

Encoding (:func:`dumps_strict`) and the non-finite rule are the producers' own
(``florist_events.jsontext``): one implementation on both sides of the stream. This
module adds what only the worker does: checking received text at C speed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from florist_events.jsontext import (
    NON_FINITE_TEXT,
    dumps_strict,
    nesting_depth,
    replace_non_finite,
)

__all__ = [
    "NON_FINITE_TEXT",
    "dumps_strict",
    "json_kind",
    "nesting_depth",
    "parse_metrics_text",
    "replace_non_finite",
]


def parse_metrics_text(text: str, max_depth: int) -> tuple[dict[str, Any], str]:
    """Parse a metrics snapshot: the object, and the strict JSON text to store.

    Text that is strict JSON already (``orjson`` accepts exactly RFC 8259 JSON with
    numbers a double can hold and no lone surrogates) is stored as received. Anything
    else Python's parser accepts (bare ``NaN``/``Infinity``, ``1e400``, escaped lone
    surrogates) is written again in strict form. Raises ``ValueError`` with a message
    a person can act on.
    """
    strict = True
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        strict = False
        value = _parse_leniently(text)
    if not isinstance(value, dict):
        raise ValueError(f"metrics must be a JSON object, got {json_kind(value)}")
    # Brackets bound the depth: only a text with more than the limit is measured.
    # ("[" in text is a memchr, far quicker than counting: snapshots seldom hold arrays.)
    brackets = text.count("{") + (text.count("[") if "[" in text else 0)
    if brackets > max_depth and nesting_depth(value, stop_after=max_depth) > max_depth:
        depth = nesting_depth(value)  # the rare path: measure it all for the message
        raise ValueError(f"metrics is nested {depth} levels deep, over the limit of {max_depth}")
    if strict:
        return value, text
    return value, dumps_strict(value)


def _parse_leniently(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("metrics is nested too deeply to parse") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"metrics is not valid JSON: {error}") from None
    except ValueError as error:  # e.g. an integer over Python's digit limit
        raise ValueError(f"metrics is not valid JSON: {error}") from None


def json_kind(value: Any) -> str:
    """How a JSON value is called in an error message."""
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")
