"""Re-applying stream history to MongoDB, e.g. after restoring a backup.

Replay reads the events stream with XRANGE, outside the consumer group: it
acknowledges nothing, claims nothing and leaves the group's position and pending
list as they are, so it can run next to live workers. Each entry goes through the
worker's own code (:func:`worker.batch.plan_entry`, then
:func:`worker.decision.decide`, a page at a time in one batch: two MongoDB round trips
per page), never coalesced, so the guards make a replay idempotent: what the document
already holds comes back as ``duplicate``.

Bad entries are counted under their outcome (``invalid``, ``unsupported_version``)
and not dead-lettered: the worker already did that when it first saw them.

``--job JOB`` replays the entries of one job: those naming it by ``job_id``, and those
naming it by a uuid (``server_uuid``, or ``client_uuid`` alone, as
``StreamMetricsReporter`` publishes them) that the job document holds, resolved as the
worker resolves them (:meth:`worker.store.MongoJobStore.resolve`). An entry whose uuid no
job holds (yet), or a bad entry without a ``job_id``, belongs to no job and is skipped.

An outage of MongoDB or Redis is waited out with the worker's retry loop
(:mod:`worker.retrying`) for up to ``outage_timeout_s``; after that,
:class:`ReplayInterrupted` says which ID to resume from (``--from``). Resuming is safe:
nothing before that ID is applied twice in effect. A Redis that does not answer the
first read is not waited for: that is an error at once, as for every other command.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, TypeVar

import redis
import structlog
from pymongo.database import Database

from worker import requeues
from worker.batch import Planned, plan_entry
from worker.decision import Ledger, decide
from worker.events import Limits
from worker.outcomes import Outcome
from worker.positions import InvalidStreamId, StreamPosition
from worker.retrying import Backoff, Outage, OutOfPatience, Retrying
from worker.settings import Settings
from worker.store import JobStore, MongoJobStore
from worker.stream import Entry

log = structlog.get_logger(__name__)

PAGE_SIZE: Final = 500
DEFAULT_OUTAGE_TIMEOUT_S: Final = 60.0

_MILLISECONDS = re.compile(r"[0-9]{1,20}")
_STREAM_ID = re.compile(r"[0-9]+-[0-9]+")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_PART: Final = 2**64 - 1

T = TypeVar("T")


class InvalidBound(ValueError):
    """A ``--from``/``--to`` that is neither a stream ID nor an ISO-8601 time."""


class ReplayInterrupted(Exception):
    """MongoDB or Redis stayed unavailable: ``resume_from`` is where to start again."""

    def __init__(self, message: str, resume_from: str, report: ReplayReport) -> None:
        super().__init__(message)
        self.resume_from = resume_from
        self.report = report


@dataclass
class ReplayReport:
    """What a replay did: outcome counts, plus what it read and skipped."""

    counts: Counter[str] = field(default_factory=Counter)
    read: int = 0
    skipped: int = 0
    last_id: str | None = None
    applied_by_job: Counter[str] = field(default_factory=Counter)


def parse_bound(text: str) -> str:
    """An XRANGE bound from a stream ID (``1700000000000-0``), milliseconds
    (``1700000000000``), ``-``/``+``, or an ISO-8601 time (naive means UTC).

    Milliseconds alone and times are whole-millisecond bounds: as a start they
    include the millisecond's first entry, as an end its last one.
    """
    value = text.strip()
    if value in ("-", "+"):
        return value
    if _MILLISECONDS.fullmatch(value):
        if int(value) > _MAX_PART:
            raise InvalidBound(f"milliseconds out of range: {text!r}")
        return str(int(value))
    if _STREAM_ID.fullmatch(value):
        try:
            return str(StreamPosition.parse(value))
        except InvalidStreamId as error:
            raise InvalidBound(str(error)) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidBound(
            f"not a stream ID (<ms>-<seq> or <ms>) nor an ISO-8601 time: {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    milliseconds = (moment - _EPOCH) // timedelta(milliseconds=1)
    if milliseconds < 0:
        raise InvalidBound(f"time before 1970 cannot be in a stream: {text!r}")
    return str(milliseconds)


def id_after(entry_id: str) -> str:
    """The smallest ID after ``entry_id``: an inclusive bound equal to ``(entry_id``."""
    position = StreamPosition.parse(entry_id)
    if position.sequence < _MAX_PART:
        return f"{position.milliseconds}-{position.sequence + 1}"
    return f"{position.milliseconds + 1}-0"


def _milliseconds(entry_id: Any) -> int:
    return StreamPosition.parse(entry_id).milliseconds


def estimate_total(redis_client: redis.Redis, stream: str, start: str, end: str) -> int:
    """How many entries lie between ``start`` and ``end``, for a progress bar.

    Exact (XLEN) for the whole stream; otherwise the stream's length scaled by the
    share of its time span that the range covers. Cheap: four one-entry reads.
    """
    length = int(redis_client.xlen(stream))
    if length == 0 or (start == "-" and end == "+"):
        return length
    first: Any = redis_client.xrange(stream, "-", "+", count=1)
    last: Any = redis_client.xrevrange(stream, "+", "-", count=1)
    low: Any = redis_client.xrange(stream, start, end, count=1)
    high: Any = redis_client.xrevrange(stream, end, start, count=1)
    if not low or not high:
        return 0
    span = _milliseconds(last[0][0]) - _milliseconds(first[0][0])
    if span <= 0:
        return length
    covered = _milliseconds(high[0][0]) - _milliseconds(low[0][0])
    return max(1, min(length, round(length * covered / span)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_of(fields: dict[Any, Any]) -> str | None:
    raw = fields.get(b"job_id", fields.get("job_id"))
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw if isinstance(raw, str) else None


@dataclass(frozen=True)
class OneJob:
    """``--job``: the one job to replay, and how to tell the entries that name it."""

    job_id: str
    store: MongoJobStore  # resolves uuids as the worker does

    def names(self, item: Planned, fields: dict[Any, Any]) -> bool:
        """The entry names this job: by ``job_id``, or by a uuid the job holds. Can
        raise :class:`StoreUnavailable` (a uuid is looked up in MongoDB)."""
        event = item.event
        if event is None or event.job_id is not None:
            return _job_of(fields) == self.job_id
        return self.store.resolve(event) == self.job_id


def _outage_began(outage: Outage) -> None:
    if outage.began:
        log.warning(
            "replay: outage, retrying", service=outage.service.label, error=str(outage.error)
        )


def _outage_over(_outage: Outage) -> None:
    log.warning("replay: outage over")


class _Patience:
    """Retries one operation through outages (:class:`worker.retrying.Retrying`), for at
    most ``timeout_s`` per outage; a Redis that fails the very first call fails at once."""

    def __init__(
        self, settings: Settings, timeout_s: float, sleep: Callable[[float], None]
    ) -> None:
        self.retrying = Retrying(
            Backoff(settings.backoff_initial_s, settings.backoff_max_s),
            on_outage=_outage_began,
            on_recovered=_outage_over,
            pause=sleep,
            patience_s=timeout_s,
            patient_at_start=False,
        )

    def call(self, operation: Callable[[], T], resume_from: str, report: ReplayReport) -> T:
        try:
            return self.retrying.call(operation)
        except OutOfPatience as error:
            raise ReplayInterrupted(
                f"{error}; {report.read} entries replayed; resume with --from {resume_from}",
                resume_from,
                report,
            ) from error.outage.error


@dataclass
class _Replay:
    """One replay's fixed choices and its running report."""

    store: JobStore
    limits: Limits
    dry_run: bool
    job: OneJob | None
    patience: _Patience
    report: ReplayReport = field(default_factory=ReplayReport)
    ledger: Ledger = field(default_factory=Ledger)

    def page(self, page: list[tuple[str, dict[Any, Any]]], records: Mapping[str, str]) -> None:
        """Apply one page exactly as the worker would (in one batch, with the same
        guards), minus coalescing and dead letters; an outage retries the page whole."""
        planned = []
        for entry_id, fields in page:
            named = _job_of(fields)
            if self.job is not None and named is not None and named != self.job.job_id:
                self.report.skipped += 1  # another job's, by its job_id: no need to parse it
                continue
            item = plan_entry(Entry(entry_id, fields), self.limits, records)
            if self.job is None or self.patience.call(
                partial(self.job.names, item, fields), page[0][0], self.report
            ):
                planned.append(item)
            else:
                self.report.skipped += 1
        decisions = self.patience.call(
            lambda: decide(planned, self.store, self.ledger, dry_run=self.dry_run),
            page[0][0],
            self.report,
        )
        for item, (outcome, error) in zip(planned, decisions, strict=True):
            self.report.counts[outcome.value] += 1
            if outcome.dead_at_once or outcome is Outcome.STORE_ERROR:
                log.warning(
                    "replay: entry not applied",
                    id=item.entry.id,
                    outcome=outcome.value,
                    error=error,
                )
            if outcome is Outcome.APPLIED and item.event is not None:
                event = item.event
                job = self.job.job_id if self.job is not None else ":".join(event.identity)
                self.report.applied_by_job[event.job_id or job] += 1
        self.report.read += len(page)
        self.report.last_id = page[-1][0]


def run_replay(
    redis_client: redis.Redis,
    store: JobStore,
    settings: Settings,
    start: str = "-",
    end: str = "+",
    *,
    dry_run: bool = False,
    job_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    page_size: int = PAGE_SIZE,
    outage_timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Replay ``[start, end]`` of ``settings.stream`` into ``store``; the full report.

    Pages of ``page_size`` entries, each page continuing after the last ID seen
    (``(<id>`` is exclusive). ``job_id`` replays one job (``store`` must then be a
    :class:`MongoJobStore`, which finds the job of an entry named by uuid). Raises
    :class:`InvalidBound` for a bad bound and :class:`ReplayInterrupted` when an outage
    outlasts ``outage_timeout_s``.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    start, end = parse_bound(start), parse_bound(end)
    patience = _Patience(settings, outage_timeout_s, sleep)
    run = _Replay(store, settings.limits, dry_run, _one_job(store, job_id), patience)
    cursor = start
    while True:
        last = run.report.last_id
        raw: Any = patience.call(
            partial(redis_client.xrange, settings.stream, cursor, end, count=page_size),
            start if last is None else id_after(last),
            run.report,
        )
        page = [(_text(entry_id), dict(fields)) for entry_id, fields in raw]
        tokens = requeues.tokens_to_check(fields for _entry_id, fields in page)
        records = patience.call(
            partial(requeues.read_records, redis_client, settings.stream, tokens),
            start if last is None else id_after(last),
            run.report,
        )
        if page:
            run.page(page, records)
        if progress is not None:
            progress(run.report.read)
        if len(raw) < page_size:
            return run.report
        cursor = "(" + _text(raw[-1][0])


def _one_job(store: JobStore, job_id: str | None) -> OneJob | None:
    if job_id is None:
        return None
    if not isinstance(store, MongoJobStore):
        raise ValueError("replaying one job resolves uuids in MongoDB: it needs a MongoJobStore")
    return OneJob(job_id, store)


def replay(
    redis_client: redis.Redis,
    database: Database[Any] | None,
    start: str = "-",
    end: str = "+",
    dry_run: bool = False,
    *,
    job_id: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[int], None] | None = None,
    store: JobStore | None = None,
    page_size: int = PAGE_SIZE,
    outage_timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
) -> dict[str, int]:
    """Re-apply the stream's entries from ``start`` to ``end`` (inclusive); ``{outcome:
    count}``. Bounds are stream IDs, milliseconds or ISO-8601 times; ``dry_run``
    decides every outcome and writes nothing; ``job_id`` replays one job only."""
    settings = settings or Settings()
    if store is None:
        if database is None:
            raise ValueError("replay needs a database or a store")
        store = MongoJobStore(database, batched=settings.batched_writes)
    report = run_replay(
        redis_client,
        store,
        settings,
        start,
        end,
        dry_run=dry_run,
        job_id=job_id,
        progress=progress,
        page_size=page_size,
        outage_timeout_s=outage_timeout_s,
    )
    return dict(report.counts)
