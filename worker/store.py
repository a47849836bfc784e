"""Applying events to MongoDB: the store seam, and the only module that talks to MongoDB.

:class:`JobStore` is everything the consume loop, replay and a dry run need from a
database: decide (and apply) a batch of events, answer a ping, check its
configuration, count its round trips. :class:`MongoJobStore` is the real one: a batch is
one projected read of its jobs and one ordered ``bulk_write`` of the guarded updates
:mod:`worker.effects` builds for it (a miss costs a settle: two more), or, when batched
writes are off or the batch is small, one guarded ``update_one`` per event, checked by
``assert_updated_successfully``, with a projected read only when it matched nothing.
Whether a batch goes as one or one by one is decided here and nowhere else.

Failures are classified in one place (:mod:`worker.mongo_failures`) and raised as what
the loop acts on: :class:`StoreUnavailable` (an outage: back off, acknowledge nothing),
:class:`StoreRejected` (MongoDB refused this one write: the entry's ``store_error``),
:class:`UnencodableEntry` (the entry's ``invalid``) or
:class:`worker.errors.Misconfigured` (stop with one line).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, NoReturn

import bson
import redis
import structlog
from bson.errors import InvalidDocument
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
    WriteError,
)

from worker import effects
from worker.document import CLASSIFY_PROJECTION, Group, Write, apply_to, group_state
from worker.entities import JOB_COLLECTION, assert_updated_successfully
from worker.errors import Misconfigured
from worker.events import Event
from worker.memorydb import EmulatedBulk, has_native_bulk_write
from worker.mongo_failures import Failure, classify, describe, misconfiguration_hint
from worker.outcomes import Decision, Outcome
from worker.positions import StreamPosition

log = structlog.get_logger(__name__)

# What pymongo's BSON encoder raises for a value it cannot encode.
ENCODING_ERRORS: Final = (InvalidDocument, UnicodeEncodeError, OverflowError)

# Compare-and-set rounds before giving up on an event for this delivery. Each round
# means another writer changed the same document between our write and our read,
# which a handful of workers cannot do more than a few times in a row.
MAX_WRITE_ATTEMPTS: Final = 8

# Settles within a settle (each finding yet another writer in the way) before the
# entries left are decided one by one.
MAX_SETTLE_DEPTH: Final = 3

# uuids resolved to jobs and kept in memory (about 100 bytes each).
UUID_CACHE_SIZE: Final = 100_000

# A batch this small is cheaper one update at a time (one round trip each when it
# matches) than read-then-bulk (two).
BATCHED_FROM: Final = 3


# Redis failures a store double may raise: never an entry's fault; the retry loop
# classifies them (worker.redis_failures).
PASS_THROUGH: Final = (redis.RedisError, redis.exceptions.RedisClusterException)


class Placed(NamedTuple):
    """An event and where it stands in the stream (its entry ID, or a vouched origin)."""

    event: Event
    position: StreamPosition


class StoreUnavailable(Exception):
    """MongoDB did not answer: transient, retry later, acknowledge nothing.

    ``decided`` are the outcomes of the batch's first events as MongoDB took them before
    it failed (every write of a bulk applied but its write concern not confirmed; the
    events applied one by one before the outage). The retry sends them again (the
    guards make that a no-op unless they were rolled back) and reports an event it then
    finds already there by its label here (:class:`worker.decision.Ledger`)."""

    def __init__(self, message: str, decided: Sequence[Decision] = ()) -> None:
        super().__init__(message)
        self.decided = list(decided)


class StoreRejected(Exception):
    """MongoDB answered but refused this one write (a document over 16 MiB, a collection
    validator), or the document cannot take it: the entry is kept pending and
    dead-lettered after ``max_deliveries``, instead of blocking every entry behind it."""


class UnencodableEntry(Exception):
    """The update built from this entry cannot be encoded as BSON: the entry is invalid."""


def raise_classified(error: BaseException) -> NoReturn:
    """Re-raise a pymongo/bson failure as what the consume loop acts on."""
    failure = classify(error)
    if failure is None:
        raise error
    message = describe(error)
    if failure is Failure.OUTAGE:
        raise StoreUnavailable(message) from error
    if failure is Failure.MISCONFIGURED:
        raise Misconfigured(f"MongoDB: {message}; {misconfiguration_hint(error)}") from error
    if failure is Failure.UNENCODABLE:
        raise UnencodableEntry(f"the update cannot be encoded as BSON: {message}") from error
    raise StoreRejected(message) from error


class JobStore(ABC):
    """Where events take effect: everything the consume loop, replay and a dry run use.

    A store implements :meth:`apply` (one event) and :meth:`ping`; the rest has a
    default: :meth:`apply_batch` one event at a time, no configuration to check, no
    collection to watch, no round trips counted.
    """

    # MongoDB round trips made to apply events (reads, updates, bulks): the figure a
    # modelled network multiplies. Pings and start-up checks are not counted.
    round_trips: int = 0

    @abstractmethod
    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        """Apply one event (with ``dry_run``, only decide its outcome). Raises
        :class:`StoreRejected`, :class:`UnencodableEntry` for the entry's fault."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the database does not answer."""

    def apply_batch(self, items: Sequence[Placed], *, dry_run: bool = False) -> list[Decision]:
        """Every event's decision, in order, as if applied one by one in stream order.
        Only an outage (:class:`StoreUnavailable`) or :class:`Misconfigured` raises."""
        return self.one_by_one(items, dry_run=dry_run)

    def check_configuration(self) -> None:
        """Raise :class:`Misconfigured` for a configuration the worker cannot work with."""
        return

    def watched_collection(self) -> Collection[Any] | None:
        """The job collection the watchdog scans (``None``: no watchdog)."""
        return None

    def one_by_one(self, items: Sequence[Placed], *, dry_run: bool = False) -> list[Decision]:
        """:meth:`decide_one` for each event; an outage part-way carries the decisions
        made before it (:attr:`StoreUnavailable.decided`)."""
        decided: list[Decision] = []
        for event, position in items:
            try:
                decided.append(self.decide_one(event, position, dry_run=dry_run))
            except StoreUnavailable as outage:
                outage.decided = decided
                raise
        return decided

    def decide_one(
        self, event: Event, position: StreamPosition, *, dry_run: bool = False
    ) -> Decision:
        """One event's decision; never raises for the entry's sake.

        Only an outage (:class:`StoreUnavailable`) or :class:`Misconfigured` propagate: a
        refusal is ``store_error``, an unencodable update ``invalid``, and anything
        unforeseen ``internal_error`` with the exception named, so that one entry can
        never stop the worker.
        """
        try:
            return Decision(self.apply(event, position, dry_run=dry_run))
        except StoreRejected as error:
            return Decision(Outcome.STORE_ERROR, str(error))
        except UnencodableEntry as error:
            return Decision(Outcome.INVALID, str(error))
        except (StoreUnavailable, Misconfigured, *PASS_THROUGH):
            raise
        except Exception as error:  # noqa: BLE001 (last resort: the entry, not the worker, fails)
            return Decision(Outcome.INTERNAL_ERROR, f"{type(error).__name__}: {error}")


@dataclass
class _Played:
    """A batch decided in memory: every entry's decision, the writes to send (with their
    entry's index), the entries that reached a job, and the documents as the writes
    leave them."""

    documents: dict[str, dict[str, Any]]
    results: list[Decision] = field(default_factory=list)
    writes: list[tuple[int, Event, StreamPosition, Write]] = field(default_factory=list)
    decided: list[tuple[int, Event, StreamPosition]] = field(default_factory=list)


class MongoJobStore(JobStore):
    """Job documents in a pymongo ``Database`` (or mongomock-ng's in-memory one)."""

    def __init__(self, database: Database[Any], *, batched: bool = True) -> None:
        self.database = database
        self.collection: Collection[Any] = database[JOB_COLLECTION]
        self.batched = batched
        self.round_trips = 0
        self._bulk: Any = (
            self.collection
            if has_native_bulk_write(self.collection)
            else EmulatedBulk(self.collection)
        )
        # uuid -> job _id. A uuid never moves to another job, so what was found once is
        # kept (bounded: the oldest half is dropped when full); a miss is never cached.
        self._jobs_by_uuid: dict[tuple[str, str], str] = {}

    def watched_collection(self) -> Collection[Any] | None:
        return self.collection

    def resolve(self, event: Event) -> str | None:
        """The ``_id`` of the event's job: its ``job_id``, or the job whose server (or
        client) has the event's uuid; ``None`` while no job has it (yet). MongoDB's
        failures are raised as classified (:func:`raise_classified`)."""
        kind, name = event.identity
        if kind == "job_id":
            return name
        cached = self._jobs_by_uuid.get((kind, name))
        if cached is not None:
            return cached
        query = {"server_uuid": name} if kind == "server_uuid" else {"clients_info.uuid": name}
        self.round_trips += 1
        # A uuid should name one job; if two share it, the smallest _id wins, in both paths.
        try:
            document = self.collection.find_one(query, {"_id": 1}, sort=[("_id", 1)])
        except PyMongoError as error:
            raise_classified(error)  # StoreUnavailable, ... as every caller acts on it
        if document is None:
            return None
        return self._remember(kind, name, str(document["_id"]))

    def _remember(self, kind: str, name: str, job_id: str) -> str:
        known = self._jobs_by_uuid.get((kind, name))
        if known is not None:
            return known
        if len(self._jobs_by_uuid) >= UUID_CACHE_SIZE:
            for key in list(self._jobs_by_uuid)[: UUID_CACHE_SIZE // 2]:
                del self._jobs_by_uuid[key]
        self._jobs_by_uuid[(kind, name)] = job_id
        return job_id

    def ensure_indexes(self) -> None:
        """The uuid lookups are indexed (a no-op when the indexes exist)."""
        try:
            self.collection.create_index("server_uuid", name="florist_server_uuid")
            self.collection.create_index("clients_info.uuid", name="florist_client_uuids")
        except OperationFailure as error:
            if error.code in (13, 11000) or classify(error) is not Failure.OUTAGE:
                log.warning("cannot create the uuid indexes", error=describe(error))
                return
            raise_classified(error)
        except PyMongoError as error:
            raise_classified(error)

    def check_configuration(self) -> None:
        """Raise :class:`Misconfigured` for unacknowledged writes or a collection whose
        default collation would compare the stored positions other than byte by byte;
        create the uuid indexes."""
        if not self.collection.write_concern.acknowledged:
            raise Misconfigured(
                "MongoDB: FLORIST_MONGODB_URI asks for unacknowledged writes (w=0); the "
                "worker must know that each update matched: remove w=0"
            )
        try:
            options = self.collection.options()
        except OperationFailure as error:
            if classify(error) is Failure.OUTAGE and error.code not in (13,):
                raise_classified(error)
            log.warning("cannot read the job collection's options", error=describe(error))
            return
        except PyMongoError as error:
            raise_classified(error)
            return
        collation = options.get("collation")
        if isinstance(collation, Mapping) and collation.get("locale") not in (None, "simple"):
            raise Misconfigured(
                f"MongoDB: collection {JOB_COLLECTION!r} has the default collation "
                f"{dict(collation)!r}; the worker compares stored positions byte by byte: "
                "use a collection with the simple (binary) collation"
            )
        self.ensure_indexes()
        if options.get("validator"):
            log.warning(
                "the job collection has a validator: writes it refuses end as store_error "
                "and are dead-lettered after FLORIST_MAX_DELIVERIES",
                validation_action=options.get("validationAction", "error"),
            )

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        try:
            return self._apply(event, position, dry_run)
        except (PyMongoError, *ENCODING_ERRORS) as error:
            raise_classified(error)

    def _apply(self, event: Event, position: StreamPosition, dry_run: bool) -> Outcome:
        if event.job_id is None:
            job_id = self.resolve(event)
            if job_id is None:
                return Outcome.UNKNOWN_JOB  # the API has not stored this uuid yet
            event = event.with_job(job_id)
        write = None if dry_run else effects.first_write(event, position)
        seen: dict[str, Any] | bool | None = False  # the document the last write was built on
        for _ in range(MAX_WRITE_ATTEMPTS):
            if write is not None:
                self.round_trips += 1
                result = self.collection.update_one(
                    write.filter, write.update, array_filters=write.array_filters
                )
                if result.matched_count:
                    assert_updated_successfully(result)
                    return Outcome.APPLIED
            self.round_trips += 1
            document = self.collection.find_one({"_id": event.job_id}, CLASSIFY_PROJECTION)
            decision = effects.after_miss(event, position, document)
            if isinstance(decision, Outcome):
                return decision
            if dry_run:
                return Outcome.APPLIED
            if decision == write and document == seen:
                # The same guard against the same document cannot match this time either:
                # the stored fields are not what the worker writes (a position of another
                # type, a non-binary collation). Retrying would loop forever.
                raise StoreRejected(
                    f"job {event.job_id!r} does not match the guard built from its own "
                    f"fields (stored positions of an unexpected type?); event {position} "
                    "cannot be applied to it"
                )
            write, seen = decision, document
        raise StoreRejected(
            f"job {event.job_id!r} kept changing under {MAX_WRITE_ATTEMPTS} attempts to apply "
            f"event {position}"
        )

    # -- a batch in one or two round trips -----------------------------------------------

    def apply_batch(self, items: Sequence[Placed], *, dry_run: bool = False) -> list[Decision]:
        """Each event's decision, in order, as :meth:`decide_one` would give them one by
        one, in two MongoDB round trips for the batch when no other writer changed its
        jobs (a settle adds two more); one by one when batched writes are off or the batch
        is smaller than :data:`BATCHED_FROM` (a dry run always plays the batch together).

        1. One projected read of every job the batch names (by ``_id`` or by uuid).
        2. The batch is played in memory against those documents, in stream order, with
           the same classification as after a miss (:func:`worker.effects.after_miss`):
           each event's outcome is decided, and each event that changes its document
           becomes a write pinned to the state it was decided on.
        3. One ordered ``bulk_write`` of those writes. When every write matched (no
           other writer touched those jobs in between), every outcome stands.

        Otherwise one more read shows which writes took effect, and the other entries
        are decided again (:meth:`_settle_misses`). An entry whose write MongoDB refuses
        is its own ``store_error``; outages and misconfiguration raise for the whole
        batch, as in :meth:`apply`; a batch that fails otherwise is decided one by one,
        so that each entry gets its own last-resort guard.
        """
        if not self.batched or (len(items) < BATCHED_FROM and not dry_run):
            return self.one_by_one(items, dry_run=dry_run)
        try:
            return self._apply_batch(items, dry_run)
        except (StoreUnavailable, Misconfigured, *PASS_THROUGH):
            raise
        except (PyMongoError, *ENCODING_ERRORS) as error:
            if classify(error) in (Failure.OUTAGE, Failure.MISCONFIGURED):
                raise_classified(error)
            log.warning("batched write refused: one by one", error=describe(error))
        except Exception as error:  # noqa: BLE001 (then each entry gets its own guard)
            log.error("batched apply failed: applying entry by entry", error=str(error))
        return self.one_by_one(items, dry_run=dry_run)

    def _documents_of(self, events: Sequence[Event]) -> dict[str, dict[str, Any]]:
        """The projected documents of every job the events name, in one read."""
        ids: set[str] = set()
        servers: set[str] = set()
        clients: set[str] = set()
        for event in events:
            kind, name = event.identity
            job_id = name if kind == "job_id" else self._jobs_by_uuid.get((kind, name))
            if job_id is not None:
                ids.add(job_id)
            elif kind == "server_uuid":
                servers.add(name)
            else:
                clients.add(name)
        return self._read_jobs(ids, servers, clients) if ids or servers or clients else {}

    def _read_jobs(
        self,
        ids: AbstractSet[str],
        servers: AbstractSet[str] = frozenset(),
        clients: AbstractSet[str] = frozenset(),
    ) -> dict[str, dict[str, Any]]:
        """One projected read of the jobs named by ``_id``, server uuid or client uuid
        (the uuids found are remembered as resolved)."""
        either: list[dict[str, Any]] = [{"_id": {"$in": sorted(ids)}}] if ids else []
        if servers:
            either.append({"server_uuid": {"$in": sorted(servers)}})
        if clients:
            either.append({"clients_info.uuid": {"$in": sorted(clients)}})
        projection = {**CLASSIFY_PROJECTION, "server_uuid": 1}
        self.round_trips += 1
        documents: dict[str, dict[str, Any]] = {}
        found = list(self.collection.find({"$or": either}, projection))
        for document in sorted(found, key=lambda found_one: str(found_one["_id"])):
            job_id = str(document["_id"])
            documents[job_id] = document
            server_uuid = document.get("server_uuid")
            if isinstance(server_uuid, str) and server_uuid in servers:
                self._remember("server_uuid", server_uuid, job_id)
            members = document.get("clients_info")
            for member in members if isinstance(members, list) else []:
                uuid = member.get("uuid") if isinstance(member, dict) else None
                if isinstance(uuid, str) and uuid in clients:
                    self._remember("client_uuid", uuid, job_id)
        return documents

    def _apply_batch(
        self,
        items: Sequence[Placed],
        dry_run: bool,
        depth: int = 0,
        read: Mapping[str, dict[str, Any]] | None = None,
    ) -> list[Decision]:
        """Read (unless a settle just did: ``read``), play, write; see :meth:`apply_batch`."""
        as_read = (
            self._documents_of([event for event, _position in items]) if read is None else read
        )
        played = self._play(items, as_read)
        if not dry_run and played.writes:
            self._write_batch(played.writes, played.results, played.decided, as_read, depth)
        return played.results

    def _play(self, items: Sequence[Placed], as_read: Mapping[str, dict[str, Any]]) -> _Played:
        """Decide every event in stream order against copies of ``as_read``, as after a
        miss (:func:`worker.effects.after_miss`); each event that changes its document
        becomes a write pinned to the state it was decided on."""
        played = _Played(documents=copy.deepcopy(dict(as_read)))
        for index, (event, position) in enumerate(items):
            kind, name = event.identity
            job_id = name if kind == "job_id" else self._jobs_by_uuid.get((kind, name))
            if job_id is None:
                played.results.append(Decision(Outcome.UNKNOWN_JOB))
                continue
            resolved = event if event.job_id is not None else event.with_job(job_id)
            played.decided.append((index, resolved, position))
            job = played.documents.get(job_id)
            decision = effects.after_miss(resolved, position, job)
            if isinstance(decision, Outcome):
                played.results.append(Decision(decision))
                continue
            try:
                bson.encode(decision.filter)
                bson.encode(decision.update)
            except ENCODING_ERRORS as error:
                message = f"the update cannot be encoded as BSON: {error}"
                played.results.append(Decision(Outcome.INVALID, message))
                continue
            assert job is not None  # after_miss decides UNKNOWN_JOB for a missing job
            apply_to(job, decision)
            played.results.append(Decision(Outcome.APPLIED))
            played.writes.append((index, resolved, position, decision))
        return played

    def _write_batch(
        self,
        planned: Sequence[tuple[int, Event, StreamPosition, Write]],
        results: list[Decision],
        decided: Sequence[tuple[int, Event, StreamPosition]],
        as_read: Mapping[str, dict[str, Any]],
        depth: int = 0,
    ) -> None:
        """Send the writes as one ordered ``bulk_write``: when every one matched, every
        outcome stands; else the batch is settled (:meth:`_settle_misses`)."""
        requests = [
            UpdateOne(
                write.filter,
                write.update,
                array_filters=list(write.array_filters or []) or None,
            )
            for _index, _event, _position, write in planned
        ]
        refused: dict[int, str] = {}
        self.round_trips += 1
        try:
            result = self._bulk.bulk_write(requests, ordered=True)
            if int(result.matched_count) == len(requests):
                return
        except BulkWriteError as error:
            concern = error.details.get("writeConcernErrors") or []
            if concern and not error.details.get("writeErrors"):
                ran_all = int(error.details.get("nMatched", -1)) == len(requests)
                try:
                    raise_classified(
                        WriteConcernError(
                            concern[0].get("errmsg", ""), concern[0].get("code"), concern[0]
                        )
                    )
                except StoreUnavailable as outage:
                    # Every write was applied but not confirmed as asked: retry (the
                    # guards make it a no-op unless they were rolled back), and keep
                    # the labels they were applied under.
                    outage.decided = list(results) if ran_all and depth == 0 else []
                    raise
            for failure in concern:
                raise_classified(
                    WriteConcernError(failure.get("errmsg", ""), failure.get("code"), failure)
                )
            for failure in error.details.get("writeErrors") or []:
                problem = WriteError(failure.get("errmsg", ""), failure.get("code"), failure)
                if classify(problem) is not Failure.REFUSAL:
                    raise_classified(problem)
                refused[int(failure["index"])] = describe(problem)
        self._settle_misses(planned, refused, results, decided, as_read, depth)

    def _settle_misses(
        self,
        planned: Sequence[tuple[int, Event, StreamPosition, Write]],
        refused: dict[int, str],
        results: list[Decision],
        decided: Sequence[tuple[int, Event, StreamPosition]],
        as_read: Mapping[str, dict[str, Any]],
        depth: int = 0,
    ) -> None:
        """Not every write matched: another writer changed a job between the read and the
        bulk, the stored fields are not what the batch foresaw, or MongoDB refused a write
        (an ordered bulk stops there: nothing after it ran).

        One more read shows how many writes took effect, per part of each job (its server
        target, its status, each client: :func:`worker.effects.groups_of`, parts whose
        decisions never depend on each other): the batch's writes to that part are
        replayed in memory on the document as first read, and the longest prefix that
        gives the part as it is now is what took effect (none, if no prefix does:
        another writer moved it). From the part's first write that did not take effect
        on, every entry of that part in the batch, written or not, is decided again, in
        stream order, against the document as it really is (:meth:`_decide_again`)."""
        stop = min(refused, default=len(planned))  # the ordered bulk ran nothing after it
        jobs = sorted({str(event.job_id) for _index, event, _position, _write in planned})
        self.round_trips += 1
        now = {
            str(document["_id"]): document
            for document in self.collection.find({"_id": {"$in": jobs}}, CLASSIFY_PROJECTION)
        }
        writes: dict[tuple[str, Group], list[tuple[int, int, Write]]] = {}
        for number, (index, event, _position, write) in enumerate(planned):
            for group in effects.groups_of(event):
                writes.setdefault((str(event.job_id), group), []).append((number, index, write))
        redo_from: dict[tuple[str, Group], int] = {}
        for (job_id, group), group_writes in writes.items():
            took = _writes_taken(as_read.get(job_id), now.get(job_id), group, group_writes, stop)
            if took < len(group_writes):
                redo_from[(job_id, group)] = group_writes[took][1]
        refused_at = {planned[number][0]: message for number, message in refused.items()}
        redo: list[tuple[int, Event, StreamPosition]] = []
        for index, event, position in decided:
            if not any(
                index >= redo_from.get((str(event.job_id), group), len(results))
                for group in effects.groups_of(event)
            ):
                continue
            if index in refused_at:
                results[index] = Decision(Outcome.STORE_ERROR, refused_at[index])
            else:
                redo.append((index, event, position))
        self._decide_again(redo, results, depth, now)

    def _decide_again(
        self,
        redo: Sequence[tuple[int, Event, StreamPosition]],
        results: list[Decision],
        depth: int,
        now: Mapping[str, dict[str, Any]],
    ) -> None:
        """Decide the entries a settle found not done against the documents as they are:
        as a batch of their own, played on the settle's read (one bulk, however many
        there are), or one by one when they are few or settling keeps finding other
        writers in the way."""
        items = [Placed(event, position) for _index, event, position in redo]
        again: list[Decision] | None = None
        if len(items) >= BATCHED_FROM and depth < MAX_SETTLE_DEPTH:
            try:
                again = self._apply_batch(items, False, depth + 1, now)
            except (PyMongoError, *ENCODING_ERRORS) as error:
                if classify(error) in (Failure.OUTAGE, Failure.MISCONFIGURED, None):
                    raise_classified(error)
                log.warning("settling as a batch refused: one by one", error=describe(error))
        if again is None:
            again = [self.decide_one(event, position) for event, position in items]
        for (index, _event, _position), outcome in zip(redo, again, strict=True):
            results[index] = outcome

    def ping(self) -> None:
        try:
            self.database.command("ping")
        except PyMongoError as error:
            raise StoreUnavailable(describe(error)) from error


class NullStore(JobStore):
    """Writes nothing and calls every event applied: isolates the Redis and validation
    cost in the benchmark."""

    def apply(self, event: Event, position: StreamPosition, *, dry_run: bool = False) -> Outcome:
        return Outcome.APPLIED

    def apply_batch(self, items: Sequence[Placed], *, dry_run: bool = False) -> list[Decision]:
        """A batch as the worker hands it to a real store (one call), every event applied."""
        return [Decision(Outcome.APPLIED)] * len(items)

    def ping(self) -> None:
        return None


def _writes_taken(
    as_read: dict[str, Any] | None,
    now: dict[str, Any] | None,
    group: Group,
    group_writes: Sequence[tuple[int, int, Write]],
    stop: int,
) -> int:
    """How many of one part's ``(number, index, write)`` writes took effect: the longest
    prefix (none from ``stop`` on) that, replayed on the document as read, gives the part
    as it is ``now``; 0 when none does (another writer moved it)."""
    simulated = copy.deepcopy(as_read or {})
    states = [group_state(simulated, group)]
    for number, _index, write in group_writes:
        if number >= stop:
            break
        apply_to(simulated, write)
        states.append(group_state(simulated, group))
    current = group_state(now, group)
    return max((k for k, state in enumerate(states) if state == current), default=0)
