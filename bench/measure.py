"""The measurements: throughput (in this process), latency, memory and two consumers
(in child processes, see :mod:`bench.child`).

Every run starts from an empty Redis and a fresh in-memory database holding the
workload's jobs, and is checked afterwards: each event handled, nothing pending, and
(for systems that write) the documents in their final state.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Final

import mongomock_ng
import redis
from pymongo.database import Database

from bench.systems import SYSTEMS, BenchFailure, Drained, Target, create_group
from bench.workloads import REPO, Fields, Workload, check_documents, endless, insert_jobs, steady

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
    """Refuse a run that did not handle, acknowledge and (except D) apply every event."""
    if drained.handled != len(workload):
        raise BenchFailure(f"{system} handled {drained.handled} of {len(workload)} events")
    left = pending(client, target)
    if left:
        raise BenchFailure(f"{system} left {left} entries pending")
    if system != "D":
        problems = check_documents(database, workload)
        if problems:
            raise BenchFailure(f"{system} on {workload.name}: " + "; ".join(problems[:3]))


def drain_once(system: str, workload: Workload, client: redis.Redis, target: Target) -> Drained:
    database = prepare(client, target, workload)
    gc.collect()
    drained = SYSTEMS[system](target, database, len(workload))
    verify(system, drained, workload, database, client, target)
    return drained


@dataclass(frozen=True)
class Throughput:
    """Events per second of each run, by system, in the order they ran."""

    workload: str
    events_per_run: int
    runs: dict[str, list[float]]

    def median(self, system: str) -> float:
        return statistics.median(self.runs[system])


def throughput(
    workload: Workload,
    systems: Sequence[str],
    runs: int,
    repeats: int,
    client: redis.Redis,
    target: Target,
    progress: Callable[[str], None],
) -> Throughput:
    """``runs`` rounds of every system in turn (A, B, C, D, A, B, ...); a run drains
    the workload ``repeats`` times from scratch, so a short workload still takes
    long enough to time."""
    rates: dict[str, list[float]] = {system: [] for system in systems}
    for round_number in range(runs):
        for system in systems:
            seconds = sum(
                drain_once(system, workload, client, target).seconds for _ in range(repeats)
            )
            rate = len(workload) * repeats / seconds
            rates[system].append(rate)
            progress(f"  {workload.name} round {round_number + 1}/{runs} {system}: {rate:,.0f}/s")
    return Throughput(workload.name, len(workload) * repeats, rates)


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
