"""Deciding a planned batch: each entry's outcome, one way for the worker, replay and a
dry run.

:func:`decide` takes a batch planned by :mod:`worker.batch` and gives every entry its
:class:`~worker.outcomes.Decision`, in order:

* an entry the planner decided (``invalid``, ``unsupported_version``, ``lost``,
  ``internal_error``) keeps that;
* the events to apply go to the store in one call (:meth:`worker.store.JobStore.apply_batch`,
  which alone decides whether they travel as one batch or one by one);
* an older snapshot folded into a newer one of its target (``coalesced_into``) is
  ``coalesced`` only when the newer one took effect (``applied``) or was already there
  (``duplicate``); otherwise it shares the newer one's fate: kept pending with it
  (``unknown_job``, ``unknown_client``, ``store_error``) and dead-lettered with it. So no
  entry is acknowledged before what stands for it is in the document, and an entry's
  outcome does not depend on how the stream is cut into batches.

Only an outage (:class:`~worker.store.StoreUnavailable`) or
:class:`~worker.errors.Misconfigured` raises; the :class:`Ledger` keeps what an outage
cut short, so the retry reports each entry as it first took effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.batch import Planned
from worker.outcomes import Decision, Outcome
from worker.store import JobStore, Placed, StoreUnavailable

# Outcomes of the newer snapshot that let an older one of its target end `coalesced`.
_STANDS_FOR_OLDER: Final = frozenset({Outcome.APPLIED, Outcome.DUPLICATE})
_COALESCED: Final = Decision(Outcome.COALESCED)

# Entries an outage left labelled, at most (bounded: at worst a retry after a very long
# outage counts an entry it had applied as a duplicate).
LEDGER_SIZE: Final = 100_000


class Ledger:
    """How entries took effect before an outage cut their batch short.

    When MongoDB fails part-way (a bulk applied but its write concern not confirmed;
    events applied one by one before the connection dropped), the batch is decided
    again after the outage: the guards make the writes no-ops, and an entry then found
    already there (``duplicate``) is reported by the outcome it was first applied with.
    """

    def __init__(self) -> None:
        self._labels: dict[str, Decision] = {}

    def cut_short(self, entry_ids: Sequence[str], decided: Sequence[Decision]) -> None:
        """The first ``len(decided)`` of ``entry_ids`` were decided before the outage."""
        if len(self._labels) + len(decided) > LEDGER_SIZE:
            self._labels.clear()
        for entry_id, decision in zip(entry_ids, decided, strict=False):
            self._labels[entry_id] = decision

    def settled(self, entry_id: str, decision: Decision) -> Decision:
        """The entry's decision now, as first taken if the retry found it there."""
        earlier = self._labels.pop(entry_id, None) if self._labels else None
        if earlier is not None and decision.outcome is Outcome.DUPLICATE:
            return earlier
        return decision


def decide(
    planned: Sequence[Planned], store: JobStore, ledger: Ledger, *, dry_run: bool = False
) -> list[Decision]:
    """Every planned entry's decision, in order (see the module's docstring)."""
    to_apply: list[Planned] = []
    items: list[Placed] = []
    for item in planned:
        if item.outcome is None and not item.coalesced_into:
            assert item.event is not None and item.position is not None  # the planner's
            to_apply.append(item)
            items.append(Placed(item.event, item.position))
    try:
        decided = store.apply_batch(items, dry_run=dry_run) if items else []
    except StoreUnavailable as outage:
        ledger.cut_short([item.entry.id for item in to_apply], outage.decided)
        raise
    by_id = {
        item.entry.id: ledger.settled(item.entry.id, decision)
        for item, decision in zip(to_apply, decided, strict=True)
    }
    return [_decision_of(item, by_id) for item in planned]


def _decision_of(item: Planned, by_id: dict[str, Decision]) -> Decision:
    if item.outcome is not None:
        return Decision(item.outcome, item.error)
    if not item.coalesced_into:
        return by_id[item.entry.id]
    newer = by_id[item.coalesced_into]
    if newer.outcome in _STANDS_FOR_OLDER:
        return _COALESCED
    why = f"as the newer entry {item.coalesced_into} of the same target"
    return Decision(newer.outcome, f"{why}: {newer.error}" if newer.error else why)
