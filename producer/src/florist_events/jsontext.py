"""JSON text for metrics snapshots: strict (what the web UI can ``JSON.parse``) and copyable.

Python's ``json`` writes NaN and infinities as bare ``NaN``/``Infinity`` tokens, which
are not JSON, and the UI cannot show ``null`` either: here they become the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.

- :func:`dumps_strict` is the compact text that goes on the stream.
- :func:`dumps_compatible` is exactly what ``json.dumps(value)`` writes (FLorist's
  format: ``", "`` and ``": "`` separators, ASCII escapes) whenever ``value`` holds no
  non-finite number, and the same text with those numbers as strings otherwise.
- :func:`jsonable` turns whatever an FL reporter is handed into JSON-compatible values.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NON_FINITE_TEXT",
    "contains_non_finite",
    "dumps_compatible",
    "dumps_strict",
    "jsonable",
    "key_text",
    "nesting_depth",
    "replace_non_finite",
]

NON_FINITE_TEXT = frozenset({"NaN", "Infinity", "-Infinity"})


def _non_finite_as_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


_LONG_DIGITS = re.compile("[0-9]{309}")


def _beyond_double(value: Any) -> bool:
    """An integer no double can hold: ``JSON.parse`` would read it as an infinity."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max
    )


def replace_non_finite(value: Any) -> Any:
    """Return ``value`` with every number no double can hold replaced by its string name:
    NaN and infinite floats, and integers beyond a double's range."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite_as_text(value)
    if _beyond_double(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: replace_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [replace_non_finite(item) for item in value]
    return value


def contains_non_finite(value: Any) -> bool:
    """Whether a NaN, an infinity or an integer beyond a double is among ``value``'s values."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if _beyond_double(value):
        return True
    if isinstance(value, dict):
        return any(contains_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_non_finite(item) for item in value)
    return False


def _dumps(value: Any, **options: Any) -> str:
    # The common case (no NaN anywhere) costs one json.dumps with allow_nan=False; only
    # when that refuses a value is the structure copied with the floats replaced.
    try:
        text = json.dumps(value, allow_nan=False, **options)
    except ValueError:
        if not contains_non_finite(value):
            raise
        return json.dumps(replace_non_finite(value), allow_nan=False, **options)
    # An integer beyond a double has at least 309 digits, which json.dumps writes as they
    # are: look for such a run (at C speed) before walking the value.
    if _LONG_DIGITS.search(text) and contains_non_finite(value):
        return json.dumps(replace_non_finite(value), allow_nan=False, **options)
    return text


def dumps_strict(value: Any) -> str:
    """Compact strict JSON text, non-finite floats written as strings (the stream's form).

    Characters are written as they are, unless the text would not be valid UTF-8 (a lone
    surrogate, as ``surrogateescape`` leaves in file names): then they are escaped.
    """
    text = _dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _dumps(value, separators=(",", ":"), ensure_ascii=True)
    return text


def dumps_compatible(value: Any) -> str:
    """``json.dumps(value)``'s text, except that non-finite floats are written as strings.

    This is how FLorist stores metrics (``Job.set_server_metrics``) and how its Redis
    reporter writes the latest snapshot, so readers of either see the same text as before.
    """
    return _dumps(value)


def nesting_depth(value: Any, stop_after: int | None = None) -> int:
    """Depth of nested objects/arrays: a scalar is 0, ``{}`` is 1, ``{"a": {}}`` is 2.

    Tuples count as arrays (``json`` writes them as such). Walks level by level, never
    recursing, so a hostile document cannot exhaust the stack; with ``stop_after`` it
    returns as soon as the depth exceeds that bound.
    """
    depth = 0
    level = [value] if isinstance(value, dict | list | tuple) else []
    while level:
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth
        children: list[Any] = []
        for item in level:
            members = item.values() if isinstance(item, dict) else item
            children += [child for child in members if isinstance(child, dict | list | tuple)]
        level = children
    return depth


def jsonable(value: Any) -> Any:
    """A JSON-compatible copy of an FL reporter's value, never raising.

    Datetimes, dates and times become ``str(value)`` (as FLorist's ``DateTimeEncoder``
    writes datetimes), mappings get text keys, tuples and sets become lists, numpy/torch
    scalars and arrays go through ``tolist()``, enums through their value, and anything
    else becomes ``str(value)``. NaN and infinities stay floats: the encoders write them
    as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return str(value)
    if isinstance(value, Mapping):
        return {key_text(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            converted = tolist()
        except Exception:  # noqa: BLE001 - a reporter must never fail on odd values
            return str(value)
        if type(converted) is not type(value):
            return jsonable(converted)
    return str(value)


def key_text(key: Any) -> str:
    """An object key as text: the keys ``json.dumps`` accepts as it writes them."""
    if isinstance(key, str):
        return key
    if isinstance(key, float) and not math.isfinite(key):
        return _non_finite_as_text(key)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    return str(jsonable(key))
