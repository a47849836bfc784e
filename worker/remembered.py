"""What the store last saw of each job, so a batch can skip its read.

After a batch whose every write matched, the store knows each of the batch's jobs as
it left them (the projected document as read, with the batch played on it). The next
batch can be decided on that instead of a read: one round trip (the ``bulk_write``)
instead of two. This is only ever a *belief*. Every write the batch makes is still
guarded in MongoDB (pinned to the state it was decided on, or guarded by position), so
a stale belief makes a write miss, never a wrong one; the store then settles the batch
as after any miss and forgets the jobs. An outcome decided *without* a write (a
duplicate, an unknown client) is never taken from memory: the store reads those jobs.

Another writer of the same jobs (a second worker of the group, an operator's replay)
makes beliefs wrong often, and every wrong belief costs a missed bulk and a settle. So
memory is trusted only while it keeps proving right: after a miss on remembered state
the store reads every batch again (two round trips, as without memory), compares what
it reads with what it remembered, and trusts memory again only after
:data:`AGREEING_BATCHES` batches in a row agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from worker.effects import classified_state

# Jobs remembered (a projected document is a few hundred bytes: ~0.5 KB x 10,000).
REMEMBERED_JOBS: Final = 10_000

# Batches whose reads agree with memory before memory is trusted again.
AGREEING_BATCHES: Final = 8


class RememberedJobs:
    """Projected job documents by ``_id``, and whether they may stand in for a read."""

    def __init__(self, capacity: int = REMEMBERED_JOBS) -> None:
        self._documents: dict[str, dict[str, Any]] = {}
        self._capacity = capacity
        self.trusted = True
        self._agreeing = 0

    def __len__(self) -> int:
        return len(self._documents)

    def usable(self, job_id: str) -> dict[str, Any] | None:
        """The remembered document, when memory is trusted; never to be mutated."""
        return self._documents.get(job_id) if self.trusted else None

    def remember(self, documents: Mapping[str, dict[str, Any]]) -> None:
        """The jobs as the store's last fully matched batch left them (taken over: the
        caller must not mutate them any more)."""
        for job_id, document in documents.items():
            self._documents.pop(job_id, None)  # re-inserted last: the oldest go first
            self._documents[job_id] = document
        if len(self._documents) > self._capacity:
            for job_id in list(self._documents)[: len(self._documents) - self._capacity // 2]:
                del self._documents[job_id]

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._documents.pop(job_id, None)

    def proved_wrong(self) -> None:
        """A write decided on remembered state missed: read every batch for a while."""
        self.trusted = False
        self._agreeing = 0

    def compare(self, read: Mapping[str, dict[str, Any] | None]) -> None:
        """While not trusted: does memory agree with what a batch just read? Enough
        agreeing batches in a row make memory trusted again."""
        if self.trusted:
            return
        compared = [job_id for job_id in read if job_id in self._documents]
        if not compared:
            return
        if all(
            classified_state(read[job_id]) == classified_state(self._documents[job_id])
            for job_id in compared
        ):
            self._agreeing += 1
            self.trusted = self._agreeing >= AGREEING_BATCHES
        else:
            self._agreeing = 0
