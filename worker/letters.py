"""The dead-letter entry layout: every original field, plus bookkeeping, never colliding.

A dead letter is the original entry's field map plus the bookkeeping fields of the
contract: ``dead_reason``, ``dead_error``, ``origin_id``, ``origin_stream``,
``deliveries`` and ``dead_at``. An original field whose name is one of those, or
starts with ``dead_``, is stored under ``dead_field:<name>`` instead, so that nothing a
producer wrote is overwritten and :func:`original_fields` gives back exactly the map
that was received. (Every name beginning with ``dead_`` is reserved for the dead
letter itself; the escape begins with ``dead_`` too, so the mapping is one to one.)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

BOOKKEEPING: Final = (
    "dead_reason",
    "dead_error",
    "origin_id",
    "origin_stream",
    "deliveries",
    "dead_at",
)
ESCAPE: Final = b"dead_field:"
_RESERVED: Final = frozenset(name.encode() for name in BOOKKEEPING)


def _reserved(name: bytes) -> bool:
    return name in _RESERVED or name.startswith(b"dead_")


def escape(name: bytes) -> bytes:
    """The name an original field is stored under in a dead letter."""
    return ESCAPE + name if _reserved(name) else name


def unescape(name: bytes) -> bytes | None:
    """The original name of a dead letter's field; ``None`` for bookkeeping fields."""
    if name.startswith(ESCAPE):
        return name[len(ESCAPE) :]
    return None if _reserved(name) else name


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def dead_letter_fields(
    original: Mapping[bytes, bytes],
    *,
    reason: str,
    error: str,
    origin_id: str,
    origin_stream: str,
    deliveries: int,
) -> dict[bytes, bytes]:
    """Every original field (escaped where needed), plus why, from where, after how
    many deliveries, when, and the entry ID the event had first."""
    fields = {escape(_raw(name)): _raw(value) for name, value in original.items()}
    fields.update(
        {
            b"dead_reason": reason.encode(),
            b"dead_error": error.encode("utf-8", "replace"),
            b"origin_id": origin_id.encode(),
            b"origin_stream": origin_stream.encode("utf-8", "replace"),
            b"deliveries": str(deliveries).encode(),
            b"dead_at": datetime.now(UTC).isoformat(timespec="milliseconds").encode(),
        }
    )
    return fields


def original_fields(letter: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The field map the dead-lettered entry had, exactly as it was received."""
    fields: dict[bytes, bytes] = {}
    for name, value in letter.items():
        original = unescape(name)
        if original is not None:
            fields[original] = value
    return fields
