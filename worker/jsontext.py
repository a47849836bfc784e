"""Strict JSON text for metrics: what the web UI can hand to ``JSON.parse``.

Python's ``json`` writes NaN and infinities as bare ``NaN``/``Infinity`` tokens, which
are not JSON; the UI cannot show ``null`` either. So they become the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` before encoding.
"""

from __future__ import annotations

import json
import math
from typing import Any

NON_FINITE_TEXT = {"NaN", "Infinity", "-Infinity"}


def _non_finite_as_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def replace_non_finite(value: Any) -> Any:
    """Return ``value`` with every NaN/Infinity float replaced by its string name."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite_as_text(value)
    if isinstance(value, dict):
        return {key: replace_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [replace_non_finite(item) for item in value]
    return value


def _contains_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_contains_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_contains_non_finite(item) for item in value)
    return False


def dumps_strict(value: Any) -> str:
    """Encode ``value`` as strict JSON text, non-finite floats written as strings.

    The common case (no NaN anywhere) costs one ``json.dumps`` with ``allow_nan=False``;
    only when that refuses a value is the structure copied with the floats replaced.
    """
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        if not _contains_non_finite(value):
            raise
    return json.dumps(
        replace_non_finite(value), allow_nan=False, separators=(",", ":"), ensure_ascii=False
    )


def nesting_depth(value: Any, stop_after: int | None = None) -> int:
    """Depth of nested objects/arrays: a scalar is 0, ``{}`` is 1, ``{"a": {}}`` is 2.

    Walks level by level (never recursing, so a hostile document cannot exhaust the
    stack) and looks only at containers; with ``stop_after`` it returns as soon as the
    depth exceeds that bound.
    """
    depth = 0
    level = [value] if isinstance(value, dict | list) else []
    while level:
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth
        children: list[Any] = []
        for item in level:
            members = item.values() if isinstance(item, dict) else item
            children += [child for child in members if isinstance(child, dict | list)]
        level = children
    return depth
