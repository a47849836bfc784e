"""The outcomes an entry can end in, and what each means for acknowledging it."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple


class Outcome(StrEnum):
    """Names as logged and counted (see the contract's outcome table).

    ``internal_error`` is the last resort: handling the entry raised something nobody
    foresaw. The entry is dead-lettered with the exception in ``dead_error`` rather
    than allowed to stop the worker (and every worker that claims it after).
    """

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    COALESCED = "coalesced"
    REJECTED_TRANSITION = "rejected_transition"
    INVALID = "invalid"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_CLIENT = "unknown_client"
    STORE_ERROR = "store_error"
    LOST = "lost"
    INTERNAL_ERROR = "internal_error"

    @property
    def dead_at_once(self) -> bool:
        """Entries that can never succeed as they are go to the dead-letter stream now."""
        return self in DEAD_AT_ONCE

    @property
    def retryable(self) -> bool:
        """Entries that may succeed later (the API has not stored the job or uuid yet;
        MongoDB refused this one write), kept pending until ``max_deliveries``."""
        return self in RETRYABLE


# The same as sets, for loops over every entry of a batch (a member hashes as its text:
# a membership test costs less than the property's call).
DEAD_AT_ONCE: Final = frozenset(
    {Outcome.INVALID, Outcome.UNSUPPORTED_VERSION, Outcome.INTERNAL_ERROR}
)
RETRYABLE: Final = frozenset({Outcome.UNKNOWN_JOB, Outcome.UNKNOWN_CLIENT, Outcome.STORE_ERROR})


class Decision(NamedTuple):
    """An entry's outcome and, for a failure, why (empty otherwise): what the store
    decides for each event, what a dead letter's ``dead_error`` says."""

    outcome: Outcome
    error: str = ""
