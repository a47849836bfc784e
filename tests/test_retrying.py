"""The one retry loop (worker/retrying.py) that the worker and replay share."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from redis._parsers import BaseParser

from worker.errors import Misconfigured
from worker.retrying import Backoff, Outage, OutOfPatience, Retrying, Service
from worker.store import StoreUnavailable

REFUSED = BaseParser.parse_error("NOPERM this user has no permissions to run the 'xack' command")
DEMOTED = BaseParser.parse_error(
    "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)"
)
NOGROUP = BaseParser.parse_error("NOGROUP No such key 's' or consumer group 'g'")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Seen:
    """What the loop told its owner, and the waits it asked for (time advances by them)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.outages: list[Outage] = []
        self.recovered: list[Outage] = []
        self.waits: list[float] = []
        self.groups_missing = 0

    def pause(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds

    def group_missing(self, _error: Exception) -> None:
        self.groups_missing += 1


def retrying(
    seen: Seen, *, patience_s: float | None = None, patient_at_start: bool = True
) -> Retrying:
    return Retrying(
        Backoff(1.0, 4.0),
        on_outage=seen.outages.append,
        on_recovered=seen.recovered.append,
        on_group_missing=seen.group_missing,
        pause=seen.pause,
        patience_s=patience_s,
        patient_at_start=patient_at_start,
        clock=seen.clock,
    )


def failing(*errors: Exception) -> Callable[[], str]:
    left = list(errors)

    def operation() -> str:
        if left:
            raise left.pop(0)
        return "done"

    return operation


def test_an_outage_is_waited_out_with_growing_waits_then_reported_over():
    seen = Seen(Clock())
    loop = retrying(seen)
    errors = [redis.ConnectionError("refused"), DEMOTED, DEMOTED, DEMOTED]
    assert loop.call(failing(*errors)) == "done"
    assert [outage.began for outage in seen.outages] == [True, False, False, False]
    assert {outage.service for outage in seen.outages} == {Service.REDIS}
    assert 0.5 <= seen.waits[0] <= 1.0 and 2.0 <= seen.waits[3] <= 4.0
    assert len(seen.recovered) == 1 and seen.recovered[0].lasted_s == pytest.approx(
        sum(seen.waits[:3])
    )
    assert loop.backoff.failures == 0  # reset by the success


def test_a_mongodb_outage_then_a_redis_one_are_two_outages():
    seen = Seen(Clock())
    retrying(seen).call(failing(StoreUnavailable("down"), redis.TimeoutError("slow")))
    assert [(o.service, o.began) for o in seen.outages] == [
        (Service.MONGODB, True),
        (Service.REDIS, True),
    ]


def test_patience_ends_an_outage_that_lasts_longer():
    seen = Seen(Clock())
    loop = retrying(seen, patience_s=5.0)
    loop.call(failing())  # started
    with pytest.raises(OutOfPatience, match="Redis unavailable for 5 s") as raised:
        loop.call(failing(*[DEMOTED] * 100))
    assert raised.value.outage.lasted_s >= 5.0
    assert sum(seen.waits) >= 5.0 and len(seen.waits) < 10


def test_an_owner_impatient_at_start_gets_the_first_outage_at_once():
    seen = Seen(Clock())
    error = redis.ConnectionError("Error 111 connecting")
    with pytest.raises(redis.ConnectionError):
        retrying(seen, patience_s=60, patient_at_start=False).call(failing(error))
    assert seen.waits == [] and seen.outages == []


def test_an_owner_impatient_at_start_waits_once_started():
    seen = Seen(Clock())
    loop = retrying(seen, patience_s=60, patient_at_start=False)
    loop.call(failing())
    assert loop.call(failing(redis.ConnectionError("gone"))) == "done"
    assert len(seen.waits) == 1


def test_a_refusal_before_any_success_is_misconfiguration():
    seen = Seen(Clock())
    with pytest.raises(Misconfigured, match="FLORIST_REDIS_URL") as raised:
        retrying(seen).call(failing(REFUSED))
    assert raised.value.__cause__ is REFUSED
    assert seen.waits == []


def test_a_refusal_after_a_success_is_waited_out_as_an_outage():
    seen = Seen(Clock())
    loop = retrying(seen)
    loop.call(failing())
    assert loop.call(failing(REFUSED, REFUSED)) == "done"
    assert [outage.refused for outage in seen.outages] == [True, True]


def test_a_missing_group_is_handed_over_and_retried_at_once():
    seen = Seen(Clock())
    assert retrying(seen).call(failing(NOGROUP)) == "done"
    assert seen.groups_missing == 1 and seen.waits == []


def test_a_missing_group_without_a_handler_is_raised():
    loop = Retrying(Backoff(1.0, 4.0), pause=lambda _s: None)
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        loop.call(failing(NOGROUP))


def test_misconfiguration_and_foreign_errors_are_raised_without_waiting():
    seen = Seen(Clock())
    loop = retrying(seen)
    loop.call(failing())
    wrong_type = BaseParser.parse_error("WRONGTYPE Operation against a key")
    with pytest.raises(Misconfigured, match="WRONGTYPE"):
        loop.call(failing(wrong_type))
    with pytest.raises(ZeroDivisionError):
        loop.call(failing(ZeroDivisionError()))
    assert seen.waits == []
