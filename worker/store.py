"""Applying events to MongoDB: the only module of the worker that talks to it.

:class:`MongoJobStore` runs the writes that :mod:`worker.effects` plans: one guarded
``update_one`` per event, checked by ``assert_updated_successfully``, and a
projected read only when that update matched nothing. A connection failure is
reported as :class:`StoreUnavailable`: the worker then backs off and retries the
whole batch, acknowledging nothing, so an outage can never lose or dead-letter an
event. Any other refusal is :class:`StoreRejected`, a failure of that one entry.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from worker import effects
from worker.entities import JOB_COLLECTION, assert_updated_successfully
from worker.events import Event
from worker.outcomes import Outcome
from worker.positions import StreamPosition

# Compare-and-set rounds before giving up on an event for this batch. Each round
# means another writer changed the same document between our write and our read,
# which a handful of workers cannot do more than a few times in a row.
MAX_WRITE_ATTEMPTS: Final = 8

# Server error codes that mean "not now" (shutting down, not primary, interrupted,
# exceeded time limit, lock timeouts), from MongoDB's retryable-writes specification.
RETRYABLE_CODES: Final = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 50, 24, 46, 112, 134}
)


class StoreUnavailable(Exception):
    """MongoDB did not answer: transient, retry later, acknowledge nothing."""


class StoreRejected(Exception):
    """MongoDB answered but refused this one write (a document over 16 MiB, a collection
    validator): the entry is kept pending and dead-lettered after ``max_deliveries``,
    instead of blocking every entry behind it."""


def is_outage(error: PyMongoError) -> bool:
    """Connection-type failures and errors MongoDB itself labels retryable."""
    if isinstance(error, ConnectionFailure | WriteConcernError):
        return True
    return error.has_error_label("RetryableWriteError") or (
        isinstance(error, OperationFailure) and error.code in RETRYABLE_CODES
    )


class JobStore(Protocol):
    """Where events take effect; the worker needs nothing else from a database."""

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        """Apply one event (or, with ``dry_run``, only decide its outcome)."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the database does not answer."""
        ...


class MongoJobStore:
    """Job documents in a pymongo ``Database`` (or mongomock-ng's in-memory one)."""

    def __init__(self, database: Database[Any]) -> None:
        self.database = database
        self.collection: Collection[Any] = database[JOB_COLLECTION]

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        try:
            return self._apply(event, position, dry_run)
        except PyMongoError as error:
            if is_outage(error):
                raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
            raise StoreRejected(f"{type(error).__name__}: {error}") from error

    def _apply(self, event: Event, position: StreamPosition, dry_run: bool) -> Outcome:
        write = None if dry_run else effects.first_write(event, position)
        for _ in range(MAX_WRITE_ATTEMPTS):
            if write is not None:
                result = self.collection.update_one(
                    write.filter, write.update, array_filters=write.array_filters
                )
                if result.matched_count:
                    assert_updated_successfully(result)
                    return write.outcome
            document = self.collection.find_one({"_id": event.job_id}, effects.CLASSIFY_PROJECTION)
            decision = effects.after_miss(event, position, document)
            if isinstance(decision, Outcome):
                return decision
            if dry_run:
                return decision.outcome
            write = decision
        raise StoreUnavailable(
            f"job {event.job_id!r} kept changing under {MAX_WRITE_ATTEMPTS} attempts to apply "
            f"event {position}; retrying later"
        )

    def ping(self) -> None:
        try:
            self.database.command("ping")
        except PyMongoError as error:
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error


class NullStore:
    """Writes nothing and calls every event applied: isolates the Redis and validation
    cost in the benchmark."""

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        return Outcome.APPLIED

    def ping(self) -> None:
        return None
