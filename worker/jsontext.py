"""Strict JSON text for metrics: what the web UI can hand to ``JSON.parse``.

Python's ``json`` writes NaN and infinities as bare ``NaN``/``Infinity`` tokens, which
are not JSON; the UI cannot show ``null`` either. So they become the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` before encoding. The same holds for every
other spelling of a number no double can hold (``1e400``, an integer of 400 digits).

What is stored must also be valid UTF-8 that BSON can encode: a JSON text may escape a
lone surrogate (``"\\ud800"``), which Python decodes into a string that no UTF-8
encoder accepts; such text is written back with the escapes kept.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import orjson

NON_FINITE_TEXT = {"NaN", "Infinity", "-Infinity"}

_COMPACT = {"allow_nan": False, "separators": (",", ":")}


def _non_finite_as_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _beyond_double(value: int) -> bool:
    return abs(value) > sys.float_info.max


def replace_non_finite(value: Any) -> Any:
    """Return ``value`` with every number no double can hold replaced by its string
    name: NaN and infinite floats, and integers beyond a double's range."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite_as_text(value)
    if isinstance(value, int) and not isinstance(value, bool) and _beyond_double(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: replace_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [replace_non_finite(item) for item in value]
    return value


def _encode(value: Any) -> str:
    """Compact strict JSON; characters kept as they are unless that would not be UTF-8."""
    text = json.dumps(value, ensure_ascii=False, **_COMPACT)  # type: ignore[arg-type]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as the escape it came as
        text = json.dumps(value, ensure_ascii=True, **_COMPACT)  # type: ignore[arg-type]
    return text


def dumps_strict(value: Any) -> str:
    """Encode ``value`` as strict JSON text, non-finite numbers written as strings.

    The common case costs one ``json.dumps`` and one C-speed check of the result
    (``orjson`` refuses NaN, overflowing numbers and lone surrogates); only when that
    check fails is the structure copied with the numbers replaced.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, **_COMPACT)  # type: ignore[arg-type]
    except ValueError:
        return _encode(replace_non_finite(value))
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return _encode(replace_non_finite(value))
    return text


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
    if text.count("{") + text.count("[") > max_depth and (
        nesting_depth(value, stop_after=max_depth) > max_depth
    ):
        depth = nesting_depth(value)  # the rare path: measure it all for the message
        raise ValueError(f"metrics is nested {depth} levels deep, over the limit of {max_depth}")
    if strict:
        return value, text
    return value, _encode(replace_non_finite(value))


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
