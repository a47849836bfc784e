"""The one retry loop: an operation run until it succeeds, through outages of Redis and
MongoDB, with exponential backoff and as much patience as its owner has.

The worker (:meth:`worker.consumer.Worker._call`) and replay (:mod:`worker.replay`) both
run their Redis and MongoDB operations through a :class:`Retrying`. What a failure means
is decided elsewhere, once: :mod:`worker.redis_failures` for Redis, the store's
:class:`worker.store.StoreUnavailable` for MongoDB (:mod:`worker.mongo_failures`). Here:

* an **outage** is waited out: backoff with jitter between attempts, the owner told of
  each wait (to log, to beat its heartbeat) and of the end; with ``patience_s``, an
  outage lasting longer raises :class:`OutOfPatience`;
* before the first success, an outage is waited out only if the owner is
  ``patient_at_start`` (a worker is: it may start before Redis; replay is not: a Redis
  that does not answer at start is an error at once, as for every other command);
* a Redis **refusal** (``NOPERM``, ``WRONGPASS``, ``NOAUTH``) before the first success
  is misconfiguration (:class:`worker.errors.Misconfigured`, one line); after it, an
  outage (an ACL changed under a running worker, a promoted replica without the ACL);
* a **missing group** is handed to ``on_group_missing`` and retried at once (without
  one, it is raised); Redis **misconfiguration** is raised as
  :class:`worker.errors.Misconfigured`; anything else is raised unchanged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from worker import redis_failures
from worker.redis_failures import RedisFailure
from worker.store import StoreUnavailable

T = TypeVar("T")


class Service(StrEnum):
    REDIS = "redis"
    MONGODB = "mongodb"

    @property
    def label(self) -> str:
        return "Redis" if self is Service.REDIS else "MongoDB"


class Backoff:
    """Exponential backoff with full jitter and a ceiling; reset after a success."""

    def __init__(self, initial_s: float, ceiling_s: float) -> None:
        self.initial_s = initial_s
        self.ceiling_s = ceiling_s
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        doublings = min(self.failures - 1, 60)  # bounded: a long outage must not overflow
        ceiling = min(self.ceiling_s, self.initial_s * 2**doublings)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not security)

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True, slots=True)
class Outage:
    """One failed attempt of an outage, as the owner of the loop is told of it."""

    service: Service
    error: Exception
    began: bool  # the outage's first failed attempt (or the first of this service)
    lasted_s: float  # since its first failed attempt
    retry_in_s: float  # the wait before the next attempt
    refused: bool = False  # a refusal of Redis waited out as an outage


class OutOfPatience(Exception):
    """An outage outlasted ``patience_s``; :attr:`outage` is its last failed attempt."""

    def __init__(self, outage: Outage, patience_s: float) -> None:
        super().__init__(
            f"{outage.service.label} unavailable for {patience_s:g} s ({outage.error})"
        )
        self.outage = outage
        self.patience_s = patience_s


def _ignore(_outage: Outage) -> None:
    return None


class Retrying:
    """Runs operations until they succeed; one instance per owner (it remembers whether
    anything succeeded yet, and the outage in progress)."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        on_outage: Callable[[Outage], None] = _ignore,
        on_recovered: Callable[[Outage], None] = _ignore,
        on_group_missing: Callable[[Exception], None] | None = None,
        pause: Callable[[float], None] = time.sleep,
        patience_s: float | None = None,
        patient_at_start: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff
        self.on_outage = on_outage
        self.on_recovered = on_recovered
        self.on_group_missing = on_group_missing
        self.pause = pause
        self.patience_s = patience_s
        self.patient_at_start = patient_at_start
        self.clock = clock
        self.started = False  # something succeeded: refusals are outages from now on
        self._outage: Outage | None = None
        self._since = 0.0

    def call(self, operation: Callable[[], T]) -> T:
        """``operation()``'s result, once it succeeds (see the module's docstring)."""
        while True:
            try:
                result = operation()
            except Exception as error:  # noqa: BLE001 (classified, else raised as it is)
                self._failed(error)
                continue
            self._succeeded()
            return result

    def _failed(self, error: Exception) -> None:
        """Wait before the next attempt, or raise: the policy of the module's docstring."""
        if isinstance(error, StoreUnavailable):
            self._wait(Service.MONGODB, error, refused=False)
            return
        failure = redis_failures.classify(error)
        if failure is None:
            raise error
        if failure is RedisFailure.GROUP_MISSING:
            if self.on_group_missing is None:
                raise error
            self.on_group_missing(error)
            return
        if failure is RedisFailure.MISCONFIGURED or (
            failure is RedisFailure.REFUSAL and not self.started
        ):
            raise redis_failures.misconfigured(error) from error
        if not self.started and not self.patient_at_start:
            raise error
        self._wait(Service.REDIS, error, refused=failure is RedisFailure.REFUSAL)

    def _wait(self, service: Service, error: Exception, *, refused: bool) -> None:
        now = self.clock()
        began = self._outage is None or self._outage.service is not service
        if began:
            self._since = now
        lasted_s = now - self._since
        outage = Outage(service, error, began, lasted_s, self.backoff.next_delay(), refused)
        self._outage = outage
        if self.patience_s is not None and lasted_s >= self.patience_s:
            raise OutOfPatience(outage, self.patience_s) from error
        self.on_outage(outage)
        self.pause(outage.retry_in_s)

    def _succeeded(self) -> None:
        self.started = True
        self.backoff.reset()
        outage, self._outage = self._outage, None
        if outage is not None:
            self.on_recovered(outage)
