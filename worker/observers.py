"""What a worker tells observers (the Prometheus exporter, the benchmark's timers).

An observer subclasses :class:`BatchObserver` and overrides the hooks it needs; every
hook is a no-op by default, so the loop calls each one on every observer. An observer
that raises is logged and does not stop consuming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from worker.batch import Planned
from worker.outcomes import Outcome
from worker.watchdog import ScanReport


class Settled(NamedTuple):
    """One entry of a settled batch and the outcome it ended with."""

    item: Planned
    outcome: Outcome


class BatchObserver:
    """Hooks the consume loop calls; each does nothing unless overridden."""

    def batch_settled(self, results: Sequence[Settled], seconds: float) -> None:
        """Once per settled batch (applied, acknowledged, dead-lettered), with each
        entry's outcome and the seconds the batch took."""

    def mongodb_round_trips(self, count: int) -> None:
        """The MongoDB round trips the store made for the batch just settled (when any)."""

    def watchdog_scanned(self, report: ScanReport) -> None:
        """After each watchdog scan that ran."""

    def heartbeat(self, redis_ok: bool, mongodb_ok: bool) -> None:
        """Each time the worker writes its heartbeat (every heartbeat interval, during an
        outage too), with whether Redis and MongoDB answered."""
