"""The worker's collector tuning while it consumes: set, then restored for the embedder.

``Worker.drain`` and ``Worker.run`` raise the young generation's threshold and freeze
the objects alive at start (see ``worker.consumer._CollectorTuning``); these tests check
that a program embedding a worker gets its own settings back, whatever happens: one
worker, two at once in threads, a collector disabled or frozen by the program itself.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence

import pytest

from tests.support import make_worker, publish, settings
from worker import consumer
from worker.batch import Planned
from worker.consumer import GEN0_THRESHOLD, Worker
from worker.observers import BatchObserver
from worker.outcomes import Outcome
from worker.store import NullStore

STATUS = {"v": "1", "type": "job.status", "job_id": "j", "status": "IN_PROGRESS"}


class Seen(BatchObserver):
    """A batch observer that notes the collector's settings while a batch is settled."""

    def __init__(self) -> None:
        self.thresholds: list[tuple[int, int, int]] = []
        self.frozen: list[int] = []

    def batch_settled(self, results: Sequence[tuple[Planned, Outcome]], seconds: float) -> None:
        self.thresholds.append(gc.get_threshold())
        self.frozen.append(gc.get_freeze_count())


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """Each test starts from CPython's defaults and leaves them so."""
    previous = gc.get_threshold()
    enabled = gc.isenabled()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    gc.enable()
    yield
    gc.unfreeze()
    gc.set_threshold(*previous)
    if not enabled:
        gc.disable()


def _worker(client, observer: Seen) -> Worker:
    return Worker(client, None, settings(), store=NullStore(), observers=(observer,))


def test_drain_tunes_the_collector_and_restores_it(fake_redis):
    publish(fake_redis, [STATUS] * 3)
    seen = Seen()
    assert _worker(fake_redis, seen).drain() == {"applied": 3}
    assert seen.thresholds == [(GEN0_THRESHOLD, 10, 10)]
    assert seen.frozen[0] > 0
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


class StopAfterOne(Seen):
    """Notes the settings, then stops the worker after its first batch."""

    def __init__(self) -> None:
        super().__init__()
        self.worker: Worker | None = None

    def batch_settled(self, results: Sequence[tuple[Planned, Outcome]], seconds: float) -> None:
        super().batch_settled(results, seconds)
        assert self.worker is not None
        self.worker.stop()


def test_run_tunes_the_collector_and_restores_it(fake_redis):
    publish(fake_redis, [STATUS] * 2)
    seen = StopAfterOne()
    worker = Worker(fake_redis, None, settings(block_ms=10), store=NullStore(), observers=(seen,))
    seen.worker = worker
    thread = threading.Thread(target=worker.run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert seen.thresholds == [(GEN0_THRESHOLD, 10, 10)]
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_larger_threshold_of_the_program_is_kept(fake_redis):
    gc.set_threshold(GEN0_THRESHOLD * 2, 20, 30)
    publish(fake_redis, [STATUS])
    seen = Seen()
    _worker(fake_redis, seen).drain()
    assert seen.thresholds == [(GEN0_THRESHOLD * 2, 20, 30)]
    assert gc.get_threshold() == (GEN0_THRESHOLD * 2, 20, 30)


def test_a_disabled_collector_is_left_alone(fake_redis):
    gc.disable()
    publish(fake_redis, [STATUS])
    seen = Seen()
    _worker(fake_redis, seen).drain()
    assert seen.thresholds == [(700, 10, 10)] and seen.frozen == [0]
    assert not gc.isenabled()


def test_what_the_program_froze_stays_frozen(fake_redis):
    sentinel = [object()]  # tracked by the collector, and frozen with the rest
    gc.freeze()
    publish(fake_redis, [STATUS])
    seen = Seen()
    _worker(fake_redis, seen).drain()
    assert seen.thresholds == [(GEN0_THRESHOLD, 10, 10)]
    # Still in the permanent generation, which gc.get_objects() does not list.
    assert not any(tracked is sentinel for tracked in gc.get_objects())
    assert gc.get_threshold() == (700, 10, 10)


def test_two_workers_at_once_restore_the_settings_once_both_stopped(fake_redis):
    """The settings are the process's: the last worker to stop restores them."""
    tuning = consumer._collector
    first, second = tuning.consuming(), tuning.consuming()
    first.__enter__()
    assert gc.get_threshold()[0] == GEN0_THRESHOLD
    second.__enter__()
    first.__exit__(None, None, None)  # the first stops while the second still consumes
    assert gc.get_threshold()[0] == GEN0_THRESHOLD
    assert gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_drains_in_threads_restore_the_settings(fake_redis, database):
    publish(fake_redis, [STATUS] * 50)
    workers = [make_worker(fake_redis, database, consumer=f"w-{index}") for index in range(3)]
    threads = [threading.Thread(target=worker.drain) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_failing_drain_restores_the_settings(fake_redis, monkeypatch):
    seen = Seen()
    worker = _worker(fake_redis, seen)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(worker, "_recover_own_pending", broken)
    with pytest.raises(RuntimeError, match="boom"):
        worker.drain()
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
