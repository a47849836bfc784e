"""Stream positions: Redis entry IDs as pairs of integers, and their stored form.

An ID ``<milliseconds>-<sequence>`` orders by the integer pair, never by its text
(``5-10`` comes after ``5-9``). MongoDB cannot compare integer pairs in one ``$lt``
and cannot hold Redis's unsigned 64-bit parts as int64, so a position is stored as
a fixed-width key: both parts zero-padded to 20 digits, whose byte order is exactly
the integer-pair order over the whole unsigned 64-bit range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

_MAX_PART = 2**64 - 1


class InvalidStreamId(ValueError):
    """Raised for text that is not a complete Redis stream entry ID."""


@dataclass(frozen=True, order=True, slots=True)
class StreamPosition:
    """A stream entry ID; dataclass ordering compares (milliseconds, sequence)."""

    milliseconds: int
    sequence: int

    @classmethod
    def parse(cls, entry_id: str | bytes) -> Self:
        """The position of ``<ms>-<seq>``; :class:`InvalidStreamId` for anything else."""
        text = entry_id if type(entry_id) is str else _as_text(entry_id)
        head, dash, tail = text.partition("-")
        # ASCII digits only (str.isdigit() alone takes "²", which int() refuses), 1-20 each.
        if not (
            dash
            and text.isascii()
            and head.isdigit()
            and tail.isdigit()
            and len(head) <= 20
            and len(tail) <= 20
        ):
            raise InvalidStreamId(f"not a stream entry ID (expected <ms>-<seq>): {text!r}")
        milliseconds, sequence = int(head), int(tail)
        if milliseconds > _MAX_PART or sequence > _MAX_PART:
            raise InvalidStreamId(f"stream entry ID part out of range: {text!r}")
        # What the frozen dataclass's __init__ does, for a third less: every entry's ID
        # is parsed on the hot path.
        position = _new(cls)
        _set_milliseconds(position, milliseconds)
        _set_sequence(position, sequence)
        return position

    @property
    def key(self) -> str:
        """The stored form: sorts as bytes exactly as the pair sorts as integers."""
        return f"{self.milliseconds:020d}-{self.sequence:020d}"

    def __str__(self) -> str:
        return f"{self.milliseconds}-{self.sequence}"


def _as_text(entry_id: str | bytes) -> str:
    return entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else entry_id


_new = object.__new__
# The slots' own setters: a frozen dataclass refuses plain assignment.
_set_milliseconds = StreamPosition.__dict__["milliseconds"].__set__
_set_sequence = StreamPosition.__dict__["sequence"].__set__
