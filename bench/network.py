"""A modelled network between a system and its (in-memory) MongoDB.

mongomock-ng runs in the consuming process: a call costs its Python work and nothing
else, so a system that makes a thousand calls looks as cheap as one that makes one.
Against a real MongoDB every call is at least one round trip (0.5-2 ms in one region).
:class:`DelayedDatabase` wraps a mongomock-ng database and sleeps a fixed delay once
per call that would go to the server (every method in :data:`ROUND_TRIP_METHODS`,
whatever it returns), and counts those calls. ``time.sleep`` releases the GIL, as a
socket wait would. A sleep overshoots (by 0.1-0.2 ms on the development machine), so
the proxy sleeps that much less, learnt from the sleeps so far, and records how long
it actually slept: the report prints the mean delay per round trip it really modelled.

What the model leaves out: bandwidth and server-side work (a large ``bulk_write``
costs the same delay as a ping), cursor batches (a ``find`` is one round trip
however many documents it returns), and connection set-up. Every system goes
through the same proxy, so these omissions fall on all of them alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Final, cast

from pymongo.collection import Collection
from pymongo.database import Database

# Collection and Database methods that send a command to the server: one delay each.
ROUND_TRIP_METHODS: Final = frozenset(
    {
        "aggregate",
        "bulk_write",
        "command",
        "count_documents",
        "create_collection",
        "create_index",
        "create_indexes",
        "delete_many",
        "delete_one",
        "distinct",
        "drop",
        "drop_collection",
        "drop_index",
        "drop_indexes",
        "estimated_document_count",
        "find",
        "find_one",
        "find_one_and_delete",
        "find_one_and_replace",
        "find_one_and_update",
        "index_information",
        "insert_many",
        "insert_one",
        "list_collection_names",
        "list_collections",
        "list_indexes",
        "options",
        "rename",
        "replace_one",
        "update_many",
        "update_one",
        "validate_collection",
    }
)

# Methods that return another collection: wrapped, so their calls are delayed too.
COLLECTION_FACTORIES: Final = frozenset({"get_collection", "with_options"})


class Network:
    """One modelled link: the delay per round trip, and what went over it."""

    def __init__(self, rtt_ms: float) -> None:
        if rtt_ms < 0:
            raise ValueError(f"a round trip cannot take {rtt_ms} ms")
        self.rtt_ms = rtt_ms
        self._delay_s = rtt_ms / 1000
        self.round_trips = 0
        self.by_method: dict[str, int] = {}
        self.slept_s = 0.0  # measured, not assumed: time.sleep overshoots
        self._overshoot_s = 0.0

    def round_trip(self, method: str) -> None:
        self.round_trips += 1
        self.by_method[method] = self.by_method.get(method, 0) + 1
        if self._delay_s:
            started = time.perf_counter()
            time.sleep(max(self._delay_s - self._overshoot_s, 0.0))
            slept = time.perf_counter() - started
            self.slept_s += slept
            # Sleep less by what the last sleeps overshot, so the mean is the modelled RTT.
            self._overshoot_s += (slept - self._delay_s) * 0.2

    def reset(self) -> None:
        self.round_trips = 0
        self.by_method = {}
        self.slept_s = 0.0

    @property
    def mean_delay_ms(self) -> float:
        """The delay actually slept per round trip (0 with no delay modelled)."""
        return self.slept_s / self.round_trips * 1000 if self.round_trips else 0.0


def _delayed(network: Network, method: str, call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        network.round_trip(method)
        return call(*args, **kwargs)

    return wrapper


class _Proxy:
    """Attribute access passes through; server calls are delayed; collections wrapped."""

    def __init__(self, target: Any, network: Network) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "network", network)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name in ROUND_TRIP_METHODS and callable(value):
            return _delayed(self.network, name, value)
        if name in COLLECTION_FACTORIES and callable(value):
            return _wrapping(self.network, value)
        if isinstance(value, Collection) or _is_mongomock_collection(value):
            return DelayedCollection(value, self.network)
        return value

    def __getitem__(self, name: str) -> Any:
        return DelayedCollection(self._target[name], self.network)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Proxy):
            other = other._target
        return bool(self._target == other)

    def __hash__(self) -> int:
        return hash(self._target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r}, rtt_ms={self.network.rtt_ms})"


def _is_mongomock_collection(value: Any) -> bool:
    return type(value).__name__ == "Collection" and "mongomock" in type(value).__module__


def _wrapping(network: Network, call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return DelayedCollection(call(*args, **kwargs), network)

    return wrapper


class DelayedCollection(_Proxy):
    """A collection whose server calls each cost one modelled round trip.

    A ``bulk_write`` is one round trip, as on a server: one delay, then the requests
    run against mongomock-ng in order, each paying mongomock's own in-process cost.
    mongomock-ng refuses ``array_filters`` in ``bulk_write``, so where the worker
    provides its ordered-bulk emulation (:class:`worker.memorydb.EmulatedBulk`, one
    ``update_one`` at a time with pymongo's semantics) the proxy runs the bulk through
    it, undelayed; ``native_bulk_write`` tells the worker to hand its bulks here
    instead of emulating them above the proxy (which would cost a delay per update).
    """

    native_bulk_write = True

    def bulk_write(self, requests: Any, ordered: bool = True, **options: Any) -> Any:
        self.network.round_trip("bulk_write")
        return _bulk_of(self._target).bulk_write(requests, ordered=ordered, **options)


def _bulk_of(collection: Any) -> Any:
    """What runs a bulk on the in-memory collection: the worker's emulation if it has
    one (mongomock-ng's own refuses array filters), else the collection itself."""
    try:
        from worker.memorydb import EmulatedBulk
    except ImportError:
        return collection
    return EmulatedBulk(collection)


class DelayedDatabase(_Proxy):
    """A database (and its collections) whose server calls each cost one round trip."""


def delayed(database: Database[Any], network: Network) -> Database[Any]:
    """``database`` behind ``network``, typed as what the systems take (a duck)."""
    return cast("Database[Any]", DelayedDatabase(database, network))
