"""The measurements: throughput (in this process), latency, memory and two consumers
(in child processes, see :mod:`bench.child`).

Every run starts from an empty Redis and a fresh in-memory database holding the
workload's jobs, and is checked afterwards: each event handled, nothing pending, and
(for systems that write) the documents in their final state.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import math
import operator
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any, Final

import mongomock_ng
import redis
from pymongo.database import Database

import worker.replay
from bench.network import Network, delayed
from bench.systems import (
    SYSTEMS,
    WRITING,
    BenchFailure,
    Drained,
    Target,
    create_group,
    worker_settings,
)
from bench.workloads import REPO, Fields, Workload, check_documents, endless, insert_jobs, steady
from worker.connections import connect_redis

PIPELINE: Final = 500
CHILD_TIMEOUT_S: Final = 1800.0


def fresh_database() -> Database[Any]:
    database: Database[Any] = mongomock_ng.MongoClient()["bench"]
    return database


def load_stream(client: redis.Redis, target: Target, entries: Iterable[Fields]) -> int:
    """XADD every entry, ``PIPELINE`` at a time (outside any timed section)."""
    count = 0
    iterator = iter(entries)
    while chunk := list(islice(iterator, PIPELINE)):
        pipe = client.pipeline(transaction=False)
        for fields in chunk:
            pipe.xadd(target.stream, fields)  # type: ignore[arg-type]
        pipe.execute()
        count += len(chunk)
    return count


def pending(client: redis.Redis, target: Target) -> int:
    summary: Any = client.xpending(target.stream, target.group)
    return int(summary["pending"])


def prepare(client: redis.Redis, target: Target, workload: Workload) -> Database[Any]:
    """Empty Redis, the jobs inserted, every event XADDed, the group created at 0."""
    client.flushdb()
    database = fresh_database()
    insert_jobs(database, workload)
    load_stream(client, target, workload.entries)
    create_group(client, target)
    return database


def verify(
    system: str,
    drained: Drained,
    workload: Workload,
    database: Database[Any],
    client: redis.Redis,
    target: Target,
) -> None:
    """Refuse a run that did not handle, acknowledge and (if it writes) apply every event."""
    if drained.handled != len(workload):
        raise BenchFailure(f"{system} handled {drained.handled} of {len(workload)} events")
    left = pending(client, target)
    if left:
        raise BenchFailure(f"{system} left {left} entries pending")
    if system in WRITING:
        problems = check_documents(database, workload)
        if problems:
            raise BenchFailure(f"{system} on {workload.name}: " + "; ".join(problems[:3]))


@dataclass(frozen=True)
class Run:
    """One or more drains of one system added up: time, events, and MongoDB round trips
    (``round_trips`` as reported: the worker's own count where it has one, else the
    proxy's; ``proxy_round_trips`` always the proxy's) with the time spent in them."""

    events: int
    seconds: float
    round_trips: int
    proxy_round_trips: int
    network_s: float
    counted_by: str
    by_method: dict[str, int] = field(default_factory=dict)  # the proxy's count

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def round_trips_per_1000(self) -> float:
        return self.round_trips / self.events * 1000

    def __add__(self, other: Run) -> Run:
        counted_by = self.counted_by if self.counted_by == other.counted_by else "mixed"
        return Run(
            self.events + other.events,
            self.seconds + other.seconds,
            self.round_trips + other.round_trips,
            self.proxy_round_trips + other.proxy_round_trips,
            self.network_s + other.network_s,
            counted_by,
            dict(Counter(self.by_method) + Counter(other.by_method)),
        )


def drain_once(
    system: str, workload: Workload, client: redis.Redis, target: Target, rtt_ms: float = 0.0
) -> Run:
    """One drain from scratch, behind a network of ``rtt_ms`` per MongoDB round trip
    (systems that use no MongoDB get none); checked before it counts."""
    database = prepare(client, target, workload)
    network = Network(rtt_ms)
    reached = delayed(database, network) if system in WRITING else None
    gc.collect()
    drained = SYSTEMS[system](target, reached, len(workload))
    verify(system, drained, workload, database, client, target)
    if drained.round_trips is not None:
        reported, counted_by = drained.round_trips, "store.round_trips"
    elif system in WRITING:
        reported, counted_by = network.round_trips, "proxy"
    else:
        reported, counted_by = 0, "no MongoDB"
    return Run(
        len(workload),
        drained.seconds,
        reported,
        network.round_trips,
        network.slept_s,
        counted_by,
        dict(network.by_method),
    )


@dataclass(frozen=True)
class Throughput:
    """Each run (all its drains added up), by system, in the order they ran."""

    workload: str
    rtt_ms: float
    events_per_run: int
    runs: dict[str, list[Run]]

    def median(self, system: str) -> float:
        return statistics.median(run.rate for run in self.runs[system])


def throughput(
    workload: Workload,
    systems: Sequence[str],
    runs: int,
    repeats: int,
    client: redis.Redis,
    target: Target,
    progress: Callable[[str], None],
    rtt_ms: float = 0.0,
) -> Throughput:
    """``runs`` rounds of every system in turn (A, A1, B, ..., A, A1, ...); a run drains
    the workload ``repeats`` times from scratch, so a short workload still takes long
    enough to time."""
    measured: dict[str, list[Run]] = {system: [] for system in systems}
    for round_number in range(runs):
        for system in systems:
            drains = [drain_once(system, workload, client, target, rtt_ms) for _ in range(repeats)]
            run = functools.reduce(operator.add, drains)
            measured[system].append(run)
            progress(
                f"  {workload.name} at {rtt_ms:g} ms, round {round_number + 1}/{runs} "
                f"{system}: {run.rate:,.0f}/s, {run.round_trips_per_1000:,.1f} round trips "
                "per 1000 events"
            )
    return Throughput(workload.name, rtt_ms, len(workload) * repeats, measured)


def replay(
    client: redis.Redis, target: Target, jobs: int, count: int, rtt_ms: float
) -> dict[str, Any]:
    """``worker.replay.replay`` over at least ``count`` entries (the steady workload of
    ``jobs`` jobs, repeated in whole passes: each pass is newer history of the same jobs,
    so the documents end as one pass leaves them) into fresh documents, behind ``rtt_ms``."""
    workload = steady(jobs)
    entries = workload.entries * -(-count // len(workload))
    count = len(entries)
    client.flushdb()
    database = fresh_database()
    insert_jobs(database, workload)
    load_stream(client, target, entries)
    network = Network(rtt_ms)
    settings = worker_settings(target)
    redis_client = connect_redis(settings)
    gc.collect()
    try:
        started = time.perf_counter()
        counts = worker.replay.replay(redis_client, delayed(database, network), settings=settings)
        seconds = time.perf_counter() - started
    finally:
        redis_client.close()
    if sum(counts.values()) != count:
        raise BenchFailure(f"replay handled {sum(counts.values())} of {count} entries")
    problems = check_documents(database, workload)
    if problems:
        raise BenchFailure("replay: " + "; ".join(problems[:3]))
    return {
        "entries": count,
        "jobs": jobs,
        "modelled_rtt_ms": rtt_ms,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds, 1),
        "mongo_round_trips_per_1000_events": round(network.round_trips / count * 1000, 1),
        "measured_delay_ms": round(network.mean_delay_ms, 3),
        "network_s": round(network.slept_s, 3),
        "scaled_1m_entries_s": round(seconds / count * 1_000_000, 0),
        "proxy_round_trips_by_method": dict(network.by_method),
        "counts": counts,
    }


# -- child processes -------------------------------------------------------------------


class Child:
    """One ``python -m bench.child`` process: ready, go, result."""

    def __init__(self, mode: str, target: Target, log: Path, **options: int | str) -> None:
        command = [sys.executable, "-m", "bench.child", mode, "--redis-url", target.redis_url]
        command += ["--consumer", target.consumer]
        for name, value in options.items():
            command += [f"--{name}", str(value)]
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        # A child that never answers (a worker stuck in an outage) ends the run, not the day.
        self._watchdog = threading.Timer(CHILD_TIMEOUT_S, self.process.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            raise BenchFailure(f"child exited ({self.process.returncode}); see {self.log}")
        return line

    def wait_ready(self) -> None:
        line = self._line()
        if line.strip() != "ready":
            raise BenchFailure(f"child said {line!r} instead of ready; see {self.log}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def result(self) -> dict[str, Any]:
        line = self._line()
        if not line.startswith("result "):
            raise BenchFailure(f"child said {line[:200]!r}; see {self.log}")
        self.process.wait(timeout=CHILD_TIMEOUT_S)
        self._watchdog.cancel()
        self._log_file.close()
        payload: dict[str, Any] = json.loads(line.removeprefix("result "))
        return payload

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self._watchdog.cancel()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log_file.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 is a latency someone saw)."""
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def latency(
    client: redis.Redis,
    target: Target,
    jobs: int,
    passes: int,
    rate: float,
    logs: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    """XADD the steady workload ``passes`` times at ``rate`` events/s from this process
    while a worker process applies them; the first second is warm-up, left out.
    With ``profile``, the worker runs under pyinstrument (and slower)."""
    workload = steady(jobs)
    entries = workload.entries * passes
    client.flushdb()
    options: dict[str, int | str] = {"jobs": jobs, "passes": passes}
    if profile is not None:
        options["profile"] = str(profile)
    child = Child("latency", target, logs / "latency.log", **options)
    try:
        child.wait_ready()
        child.go()
        started = time.perf_counter()
        for index, fields in enumerate(entries):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamped: dict[Any, Any] = {**fields, "bench_t": f"{time.time():.6f}"}
            client.xadd(target.stream, stamped)
        offered_s = time.perf_counter() - started
        outcome = child.result()
    except BaseException:
        child.kill()
        raise
    if outcome["problems"]:
        raise BenchFailure("worker (latency run): " + "; ".join(outcome["problems"]))
    warm = outcome["latencies_s"][int(rate) :] or outcome["latencies_s"]
    return {
        "jobs": jobs,
        "offered_rate": rate,
        "achieved_rate": round(len(entries) / offered_s, 1),
        "applied_rate": round(len(entries) / outcome["span_s"], 1),
        "events": len(entries),
        "measured_events": len(warm),
        "p50_ms": round(percentile(warm, 0.50) * 1000, 2),
        "p90_ms": round(percentile(warm, 0.90) * 1000, 2),
        "p99_ms": round(percentile(warm, 0.99) * 1000, 2),
        "max_ms": round(max(warm) * 1000, 2),
        "p99_ms_by_tenth": [
            round(percentile(part, 0.99) * 1000, 1) for part in _tenths(warm) if part
        ],
        "counts": outcome["counts"],
    }


def _tenths(values: Sequence[float]) -> list[Sequence[float]]:
    bounds = [len(values) * tenth // 10 for tenth in range(11)]
    return [values[start:end] for start, end in itertools.pairwise(bounds)]


def _lag(client: redis.Redis, target: Target, produced: int) -> int:
    groups: Any = client.xinfo_groups(target.stream)
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == target.group:
            read = group.get("entries-read")
            if read is not None:
                return produced - int(read)
    return produced


def memory(
    client: redis.Redis, target: Target, events: int, warmup: int, jobs: int, logs: Path
) -> dict[str, Any]:
    """Feed ``events`` events (the same ``jobs`` jobs over and over, so the database
    stops growing after the first pass) with at most ~20,000 waiting, and read the
    worker process's RSS after ``warmup`` events and at the end."""
    client.flushdb()
    create_group(client, target)
    child = Child("rss", target, logs / "rss.log", jobs=jobs, events=events, warmup=warmup)
    source: Iterator[Fields] = endless(jobs)
    produced = 0
    try:
        child.wait_ready()
        child.go()
        started = time.perf_counter()
        while produced < events:
            if _lag(client, target, produced) > 20_000:
                if not child.alive:
                    raise BenchFailure(f"the memory run's worker exited; see {child.log}")
                time.sleep(0.01)
                continue
            chunk = list(islice(source, min(PIPELINE, events - produced)))
            pipe = client.pipeline(transaction=False)
            for fields in chunk:
                pipe.xadd(target.stream, fields, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
            pipe.execute()
            produced += len(chunk)
        outcome = child.result()
        seconds = time.perf_counter() - started
    except BaseException:
        child.kill()
        raise
    if outcome["handled"] < events:
        raise BenchFailure(f"worker (memory run) handled {outcome['handled']} of {events}")
    warm, end = outcome["warm_rss"], outcome["end_rss"]
    mib = 1024 * 1024
    return {
        "events": events,
        "warmup_events": warmup,
        "jobs": jobs,
        "seconds": round(seconds, 1),
        "rss_warm_mib": round(warm / mib, 1),
        "rss_end_mib": round(end / mib, 1),
        "rss_peak_mib": round(outcome["peak_rss"] / mib, 1),
        "growth_pct": round((end - warm) / warm * 100, 2),
        "samples_mib": [[count, round(value / mib, 1)] for count, value in outcome["samples"]],
        "counts": outcome["counts"],
    }


def consumers(
    client: redis.Redis, target: Target, jobs: int, passes: int, processes: int, logs: Path
) -> float:
    """Events/s of ``processes`` worker processes in one group draining the steady
    workload ``passes`` times over, from "go" until the last one is done.

    Each process has its own in-memory database (mongomock cannot be shared), so the
    documents cannot be checked here; every entry handled and none pending is.
    """
    workload = steady(jobs)
    entries = workload.entries * passes
    client.flushdb()
    load_stream(client, target, entries)
    create_group(client, target)
    children = [
        Child(
            "consume",
            Target(target.redis_url, target.stream, target.group, f"bench-consumer-{number}"),
            logs / f"consume-{number}.log",
            jobs=jobs,
        )
        for number in range(1, processes + 1)
    ]
    try:
        for child in children:
            child.wait_ready()
        for child in children:
            child.go()
        outcomes = [child.result() for child in children]
    except BaseException:
        for child in children:
            child.kill()
        raise
    handled = sum(outcome["handled"] for outcome in outcomes)
    if handled != len(entries) or pending(client, target):
        raise BenchFailure(f"{processes} consumers handled {handled} of {len(entries)} events")
    seconds = max(o["ended"] for o in outcomes) - min(o["started"] for o in outcomes)
    return float(len(entries) / seconds)
