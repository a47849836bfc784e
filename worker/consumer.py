"""The consume loop: read a batch from the group, apply it, settle it, repeat.

One :class:`Worker` per process. Several workers share one consumer group; the
guards in :mod:`worker.effects` make their interleaving harmless. The policy:

* at start, re-read this consumer's own pending entries (a restart under the same
  name finishes what it had), then new entries with a blocking XREADGROUP;
* now and then, take back its own entries left pending for a retry, and claim
  entries that dead consumers left idle longer than ``claim_idle_ms``;
* a batch is planned (parsed, coalesced: :mod:`worker.batch`), decided and applied
  (:mod:`worker.decision`), then settled: dead letters and one XACK in one MULTI/EXEC;
* an outage of Redis or MongoDB acknowledges nothing: back off exponentially and
  retry the batch in hand, keeping what already took effect.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import redis
import structlog
from pymongo.database import Database

from worker import requeues
from worker.batch import Planned, plan_batch
from worker.decision import Ledger, decide
from worker.health import remove_heartbeat, write_heartbeat
from worker.observers import BatchObserver, Settled
from worker.outcomes import DEAD_AT_ONCE, RETRYABLE, Decision, Outcome
from worker.positions import StreamPosition
from worker.redis_failures import classify, describe
from worker.retrying import Backoff, Outage, Retrying, Service
from worker.settings import Settings
from worker.store import JobStore, MongoJobStore, StoreUnavailable
from worker.stream import DeadLetter, Entry, GroupStream
from worker.watchdog import ScanReport, Watchdog

log = structlog.get_logger(__name__)
T = TypeVar("T")


def entry_age_s(entry_id: str) -> float:
    """Seconds since the entry was added (its ID's milliseconds, by this host's clock)."""
    return time.time() - StreamPosition.parse(entry_id).milliseconds / 1000


# Young-generation threshold of the cyclic garbage collector while a worker consumes
# (CPython's default is 700): a few batches' allocations between collections.
GEN0_THRESHOLD = 100_000


class _CollectorTuning:
    """Fewer, cheaper collections while a worker consumes; the previous settings after.

    A batch keeps ~1,000 entries alive at once (each with its event, its parsed
    metrics, its position), so with CPython's default threshold (700 allocations) the
    collector runs every few entries, traverses the batch's survivors again and again,
    and its full collections walk every long-lived object of the process (pydantic,
    redis-py, pymongo): about 5 of the 36 us per entry profiled in bench/README.md.
    Yet the hot path makes no reference cycles (a 7,100-entry drain leaves 72 objects
    for the collector, all from setting up the Redis client): its garbage is freed by
    reference counting. So while consuming, the young generation may grow to
    :data:`GEN0_THRESHOLD` allocations, and the objects alive when consuming starts
    (modules, caches, the clients) are frozen (``gc.freeze``), out of the collections.

    Harmless for a program that embeds a worker: the settings are the process's, so
    they are taken by the first worker that starts consuming and given back by the last
    one that stops (threads count): the previous threshold (unless changed meanwhile),
    and what this froze is unfrozen. Memory stays bounded: at most
    :data:`GEN0_THRESHOLD` objects of cyclic garbage wait for a collection. A collector
    that is disabled is left alone; objects frozen by the program stay frozen (and
    nothing more is frozen).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._previous: tuple[int, int, int] | None = None
        self._froze = False

    @contextmanager
    def consuming(self) -> Iterator[None]:
        """The tuning for as long as the block runs (``Worker.drain`` and ``run``)."""
        with self._lock:
            self._users += 1
            if self._users == 1 and gc.isenabled():
                self._previous = gc.get_threshold()
                self._froze = gc.get_freeze_count() == 0
                if self._froze:
                    gc.freeze()
                young, middle, old = self._previous
                gc.set_threshold(max(young, GEN0_THRESHOLD), middle, old)
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._previous is not None:
                    if gc.get_threshold()[0] == max(self._previous[0], GEN0_THRESHOLD):
                        gc.set_threshold(*self._previous)  # unless changed meanwhile
                    if self._froze:
                        gc.unfreeze()
                    self._previous, self._froze = None, False


_collector = _CollectorTuning()


_LOGGED_EACH = RETRYABLE | {Outcome.LOST}
_FAILED = frozenset({Outcome.STORE_ERROR, Outcome.INTERNAL_ERROR})  # logged by _log_failures
_NAMES = {"job_id", "server_uuid", "client_uuid"}  # how an entry names its job and host


class Stopping(Exception):
    """Raised inside the loop when a stop was requested during an outage wait."""


class Worker:
    """Consumes the events stream as one member of the consumer group."""

    def __init__(
        self,
        redis_client: redis.Redis,
        database: Database[Any] | None,
        settings: Settings | None = None,
        *,
        store: JobStore | None = None,
        observers: Sequence[BatchObserver] = (),
    ) -> None:
        self.settings = settings or Settings()
        self.redis = redis_client
        self.stream = GroupStream(redis_client, self.settings)
        if store is None:
            if database is None:
                raise ValueError("Worker needs a database or a store")
            store = MongoJobStore(database, batched=self.settings.batched_writes)
        self.store = store
        # The watchdog reads the job collection: only a store that has one gets it.
        collection = store.watched_collection()
        self.watchdog = (
            Watchdog(redis_client, collection, self.settings) if collection is not None else None
        )
        self._last_watchdog = time.monotonic()  # the first scan after one interval
        self.observers = list(observers)
        self.counts: Counter[str] = Counter()
        self.dead_lettered = 0
        self._stop = threading.Event()
        self._retrying = Retrying(
            Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s),
            on_outage=self._wait_out,
            on_recovered=self._recovered,
            on_group_missing=self._recreate_group,
            pause=self._pause,
        )
        self._group_ready = False
        self._nogroup_logged = False
        self._own_pending_recovered = False
        self._running = False  # only run() keeps a heartbeat; drain() leaves no file behind
        self._last_claim = 0.0
        self._last_heartbeat = 0.0
        self._last_summary = time.monotonic()
        self._redis_ok = True
        self._store_ok = True
        self._announced: set[str] = set()
        self._round_trips_reported = 0
        # How entries took effect before an outage cut their batch short.
        self._ledger = Ledger()

    # -- public surface -------------------------------------------------------------

    def drain(self) -> dict[str, int]:
        """Handle every entry available now (own pending, new, retryable, claimable),
        then return ``{outcome: count}`` for what this call handled."""
        before = self.counts.copy()
        with _collector.consuming():
            try:
                self._call(lambda: None)
                self._recover_own_pending()
                # Retries and abandoned entries first, once: an entry this call keeps
                # pending for a retry is tried again by the next call, not this one.
                self._claim(force=True)
                while self._handle_next(block_ms=None):
                    pass
            except Stopping:
                pass
        return dict(self.counts - before)

    def run(self) -> None:
        """Consume until :meth:`stop`, SIGTERM or SIGINT; finish the batch in hand first."""
        with self._signals_stop(), _collector.consuming():
            log.info("worker starting", **self.settings.redacted())
            self._running = True
            try:
                self._call(lambda: None)
                self._recover_own_pending()
                while not self._stop.is_set():
                    self._claim(force=False)
                    self._handle_next(block_ms=self.settings.block_ms)
                    self._tick()
            except Stopping:
                pass
            finally:
                self._running = False
                remove_heartbeat(self.settings.heartbeat_file)
                self._log_summary()
                log.info("worker stopped", consumer=self.settings.consumer)

    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def round_trips(self) -> int:
        """MongoDB round trips the store made to apply events (0 if it does not count)."""
        return self.store.round_trips

    @property
    def round_trips_per_1000_events(self) -> float | None:
        events = self.counts.total()
        return None if not events else round(1000 * self.round_trips / events, 2)

    def run_watchdog(self) -> ScanReport | None:
        """One watchdog scan now (``run()`` does this every ``watchdog_interval_s``):
        finishes, by publishing a ``job.status`` event, the IN_PROGRESS jobs whose server
        was silent longer than ``stale_after_s``; ``None`` when it did not scan (off,
        another worker holds the lock, an outage). Never raises."""
        if self.watchdog is None:
            return None
        report = self.watchdog.scan()
        if report is not None:
            for observer in self.observers:
                try:
                    observer.watchdog_scanned(report)
                except Exception as error:  # noqa: BLE001 (an exporter must not stop consuming)
                    log.error(
                        "watchdog observer failed",
                        observer=type(observer).__name__,
                        error=str(error),
                    )
        return report

    # -- the loop's steps -----------------------------------------------------------

    def _ensure_group(self) -> None:
        self.store.check_configuration()
        if self.stream.ensure_group():
            log.info("consumer group created", stream=self.stream.stream, group=self.stream.group)
        self._group_ready = True

    def _recover_own_pending(self) -> None:
        """Entries delivered to this consumer name before a restart come first (once)."""
        if self._own_pending_recovered:
            return
        self._own_pending_recovered = True
        while not self._stop.is_set():
            entries = self._call(lambda: self.stream.read_own_pending(self.settings.batch_size))
            if not entries:
                return
            self._handle(entries)

    def _handle_next(self, block_ms: int | None) -> bool:
        entries = self._call(lambda: self.stream.read_new(self.settings.batch_size, block_ms))
        if entries:
            self._handle(entries)
        return bool(entries)

    def _claim(self, *, force: bool) -> bool:
        """Retry own failed entries and claim abandoned ones; True if any were handled."""
        interval = min(self.settings.retry_idle_ms, self.settings.claim_idle_ms) / 2000
        now = time.monotonic()
        if not force and now - self._last_claim < min(max(interval, 0.2), 5.0):
            return False
        self._last_claim = now
        handled = False
        retries = self._call(
            lambda: self.stream.claim_own_retries(
                self.settings.retry_idle_ms, self.settings.batch_size
            )
        )
        if retries:
            self._handle(retries)
            handled = True
        for _page in range(100):  # bounded, so a huge PEL cannot starve new entries
            if self._stop.is_set():
                break
            claimed, trimmed = self._call(
                lambda: self.stream.claim_abandoned(
                    self.settings.claim_idle_ms, self.settings.batch_size
                )
            )
            if claimed or trimmed:
                log.info("claimed abandoned entries", count=len(claimed), trimmed=len(trimmed))
                self._handle(claimed + [Entry(entry_id, None) for entry_id in trimmed])
                handled = True
            if self.stream.claim_scan_complete:
                break
        return handled

    def _handle(self, entries: Sequence[Entry]) -> None:
        """Decide, apply and settle one batch, retrying through outages: decided once
        (what an outage cut short is in the ledger), then settled, however often Redis
        fails."""
        started = time.perf_counter()
        tokens = requeues.tokens_to_check(entry.fields for entry in entries)
        records = self._call(lambda: requeues.read_records(self.redis, self.stream.stream, tokens))
        planned = plan_batch(entries, self.settings.limits, records)
        decisions = self._call(lambda: decide(planned, self.store, self._ledger))
        self._log_failures(planned, decisions)

        def settle() -> tuple[list[Settled], list[DeadLetter]]:
            results, acknowledged, dead = self._dispose(planned, decisions)
            self.stream.settle(acknowledged, dead)
            return results, dead

        results, dead = self._call(settle)
        self._record(results, dead, time.perf_counter() - started)

    def _dispose(
        self, planned: Sequence[Planned], decisions: Sequence[Decision]
    ) -> tuple[list[Settled], list[str], list[DeadLetter]]:
        """What becomes of each entry: acknowledged, dead-lettered, or kept pending."""
        results: list[Settled] = []
        acknowledged: list[str] = []
        dead: list[DeadLetter] = []
        for item, (outcome, error) in zip(planned, decisions, strict=True):
            entry_id = item.entry.id
            results.append(Settled(item, outcome))
            if outcome in DEAD_AT_ONCE:
                dead.append(DeadLetter(item.entry, outcome.value, error, 1, item.origin_id))
            elif outcome in RETRYABLE:
                deliveries = self.stream.deliveries(entry_id)
                if self._gives_up(outcome, deliveries, entry_id):
                    reason = f"{outcome.value} after {deliveries} deliveries"
                    if error:
                        reason = f"{reason}: {error}"
                    dead.append(
                        DeadLetter(item.entry, outcome.value, reason, deliveries, item.origin_id)
                    )
            else:
                acknowledged.append(entry_id)
        return results, acknowledged, dead

    def _gives_up(self, outcome: Outcome, deliveries: int, entry_id: str) -> bool:
        """Whether a retryable entry goes to the dead letters now: a refused write after
        ``max_deliveries``; an unknown job or client (or a uuid the API has not stored
        yet) only once it is also ``unknown_retry_s`` old, which gives FLorist's start
        sequence (server, fit_start, clients, set_uuids) time whatever the retry pace."""
        if deliveries < self.settings.max_deliveries:
            return False
        if outcome is Outcome.STORE_ERROR:
            return True
        return entry_age_s(entry_id) >= self.settings.unknown_retry_s

    @staticmethod
    def _log_failures(planned: Sequence[Planned], decisions: Sequence[Decision]) -> None:
        for item, (outcome, reason) in zip(planned, decisions, strict=True):
            if outcome not in _FAILED or item.coalesced_into:
                continue  # an entry that shares a newer one's failure: that one is logged
            if outcome is Outcome.STORE_ERROR:
                log.error("MongoDB refused an entry", id=item.entry.id, error=reason)
            elif item.outcome is None:  # the planner's internal errors are dead-lettered
                log.error("handling an entry failed unexpectedly", id=item.entry.id, error=reason)

    def _record(
        self, results: Sequence[Settled], dead: Sequence[DeadLetter], seconds: float
    ) -> None:
        """Count, log and tell the observers what became of a settled batch."""
        # Counted by outcome, then by name: one pass in C, not a call to .value per entry.
        tally = Counter([outcome for _item, outcome in results])
        for outcome, count in tally.items():
            self.counts[outcome.value] += count
        self._log_entries(results, tally, {letter.entry.id for letter in dead})
        for letter in dead:
            self.dead_lettered += 1
            level = log.error if letter.reason == Outcome.INTERNAL_ERROR.value else log.warning
            level(
                "entry dead-lettered",
                id=letter.entry.id,
                reason=letter.reason,
                error=letter.error,
                deliveries=letter.deliveries,
                dead_stream=self.stream.dead_stream,
            )
        trips = self.round_trips - self._round_trips_reported
        self._round_trips_reported += trips
        for observer in self.observers:
            try:
                observer.batch_settled(results, seconds)
                if trips:
                    observer.mongodb_round_trips(trips)
            except Exception as error:  # noqa: BLE001 (an exporter must not stop consuming)
                log.error(
                    "batch observer failed", observer=type(observer).__name__, error=str(error)
                )

    def _log_entries(
        self, results: Sequence[Settled], tally: Counter[Outcome], dead_ids: set[str]
    ) -> None:
        """A line per lost entry and per entry kept for a retry (at info the first time);
        with debug lines on, one per entry."""
        batch_log = log.bind()  # one logger per batch, not per entry: this is the hot path
        enabled_for = getattr(batch_log, "is_enabled_for", None)  # structlog's filtering loggers
        per_entry = enabled_for is None or enabled_for(logging.DEBUG)
        # Without debug lines, only lost and retryable entries have a line of their own.
        if not per_entry and not any(outcome in _LOGGED_EACH for outcome in tally):
            return
        for item, outcome in results:
            if outcome is Outcome.LOST:
                batch_log.error(
                    "entry lost: trimmed from the stream while pending", id=item.entry.id
                )
            elif outcome in RETRYABLE and item.entry.id not in dead_ids:
                first_time = item.entry.id not in self._announced
                if first_time:
                    if len(self._announced) >= 100_000:
                        self._announced.clear()  # bounded: at worst a line is repeated
                    self._announced.add(item.entry.id)
                elif not per_entry:
                    continue  # its line would be dropped: build nothing for it
                (batch_log.info if first_time else batch_log.debug)(
                    "entry kept pending for a retry",
                    id=item.entry.id,
                    outcome=outcome.value,
                    # What it waits for: the job's id, or the server's or client's uuid.
                    **(
                        item.event.model_dump(include=_NAMES, exclude_none=True)
                        if item.event
                        else {}
                    ),
                )
            elif per_entry:
                batch_log.debug(
                    "entry handled", id=item.entry.id, outcome=outcome.value, type=item.event_type
                )

    # -- outages --------------------------------------------------------------------

    def _call(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` until it succeeds (:class:`worker.retrying.Retrying`): wait
        out Redis and MongoDB outages and recreate a lost group, however often it takes
        (or until a stop). Only misconfiguration (a refusal at start included) raises."""

        def attempt() -> T:
            if not self._group_ready:
                self._ensure_group()
            return operation()

        return self._retrying.call(attempt)

    def _recreate_group(self, _error: Exception) -> None:
        """The stream or group vanished (Redis restarted without persistence, or the
        stream was deleted): the next attempt recreates the group and goes on."""
        if not self._nogroup_logged:
            log.warning("consumer group missing: recreating it", group=self.stream.group)
            self._nogroup_logged = True
        self._group_ready = False

    def _wait_out(self, outage: Outage) -> None:
        """Before each wait of an outage: say so (once), and keep the heartbeat going."""
        which = outage.service.value
        if outage.service is Service.MONGODB:
            self._store_ok = False
        else:
            self._redis_ok = False
            if self.watchdog is not None:
                self.watchdog.redis_outage()  # silence counts again from when Redis is back
        if outage.began and outage.refused:
            log.error(
                "Redis refused the worker's user: backing off, acknowledging nothing "
                "(check its password and ACL)",
                service=which,
                error=describe(outage.error),
            )
        elif outage.began:
            log.error(
                "outage: backing off, acknowledging nothing", service=which, error=str(outage.error)
            )
        else:
            log.debug("still unavailable", service=which, retry_in_s=round(outage.retry_in_s, 2))
        self._beat_during_outage()

    def _pause(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopping

    def _recovered(self, outage: Outage) -> None:
        log.warning("outage over", service=outage.service.value, lasted_s=round(outage.lasted_s, 1))
        self._redis_ok = self._store_ok = True

    # -- periodic work --------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.settings.heartbeat_interval_s:
            self._last_heartbeat = now
            self._heartbeat()
        if now - self._last_summary >= self.settings.summary_interval_s:
            self._last_summary = now
            self._log_summary()
        if now - self._last_watchdog >= self.settings.watchdog_interval_s:
            self._last_watchdog = now
            self.run_watchdog()

    def _beat_during_outage(self) -> None:
        """The loop is alive but a service is down: say which, so the healthcheck reports
        the outage rather than a stuck loop (and a worker that starts during one)."""
        now = time.monotonic()
        if not self._running or now - self._last_heartbeat < self.settings.heartbeat_interval_s:
            return
        self._last_heartbeat = now
        self._beat(redis_ok=self._redis_ok, mongodb_ok=self._store_ok)

    def _heartbeat(self) -> None:
        try:
            self.redis.ping()
            redis_ok = True
        except Exception as error:
            if classify(error) is None:
                raise
            redis_ok = False
        try:
            self.store.ping()
            store_ok = True
        except StoreUnavailable:
            store_ok = False
        self._beat(redis_ok=redis_ok, mongodb_ok=store_ok)

    def _beat(self, *, redis_ok: bool, mongodb_ok: bool) -> None:
        """Write the heartbeat file (the container's healthcheck) and tell the observers."""
        write_heartbeat(
            self.settings.heartbeat_file,
            self.settings.consumer,
            redis_ok=redis_ok,
            mongodb_ok=mongodb_ok,
            events=self.counts.total(),
            mongodb_round_trips=self.round_trips,
        )
        for observer in self.observers:
            try:
                observer.heartbeat(redis_ok, mongodb_ok)
            except Exception as error:  # noqa: BLE001 (an exporter must not stop consuming)
                log.error(
                    "heartbeat observer failed", observer=type(observer).__name__, error=str(error)
                )

    def _log_summary(self) -> None:
        try:
            pending: int | None = self.stream.pending_count()
            lag = self.stream.health().lag  # counted; warns of lost or far-ahead entries
        except Exception as error:
            if classify(error) is None:
                raise
            pending = lag = None
        log.info(
            "summary",
            counts=dict(self.counts),
            dead_lettered=self.dead_lettered,
            pending=pending,
            lag=lag,
            mongodb_round_trips_per_1000_events=self.round_trips_per_1000_events,
        )

    @contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the loop gracefully (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", signal=signal.Signals(signum).name)
            self.stop()

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
