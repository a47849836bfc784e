"""A worker in a process of its own, for what cannot be measured in the parent.

Latency needs the producer and the worker on separate interpreters (one GIL would
make each wait for the other), RSS must be one process's alone, and two consumers
must be two processes. The protocol with the parent is three lines: the child
prints ``ready`` once set up, waits for a line on stdin, and prints ``result <json>``.

Run as ``python -m bench.child {latency,rss,consume} --redis-url URL ...`` from the
repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mongomock_ng
from pymongo.database import Database

from bench.memory import rss_bytes, rss_peak_bytes
from bench.systems import Target, drain_worker, worker_settings
from bench.workloads import check_documents, insert_jobs, steady
from worker.connections import connect_redis
from worker.consumer import Worker
from worker.logs import configure_logging
from worker.observers import BatchObserver, Settled

SENT_FIELD = b"bench_t"


class LatencyObserver(BatchObserver):
    """XADD-to-applied time of every entry: the producer's clock in ``bench_t``, ours
    once the batch is applied and acknowledged; stops the worker after ``expected``."""

    def __init__(self, worker: Worker, expected: int) -> None:
        self.worker = worker
        self.expected = expected
        self.latencies: list[float] = []
        self.first_sent: float | None = None
        self.last_settled = 0.0

    def batch_settled(self, results: Sequence[Settled], seconds: float) -> None:
        now = self.last_settled = time.time()
        for item, _outcome in results:
            fields = item.entry.fields or {}
            sent = float(fields[SENT_FIELD])
            if self.first_sent is None:
                self.first_sent = sent
            self.latencies.append(now - sent)
        if len(self.latencies) >= self.expected:
            self.worker.stop()


class MemoryObserver(BatchObserver):
    """RSS after the warm-up, every tenth of the run, and at the end."""

    def __init__(self, worker: Worker, expected: int, warmup: int) -> None:
        self.worker = worker
        self.expected = expected
        self.warmup = warmup
        self.handled = 0
        self.samples: list[tuple[int, int]] = [(0, rss_bytes())]
        self.step = max(expected // 10, 1)
        self.next_sample = self.step
        self.warm_rss: int | None = None

    def batch_settled(self, results: Sequence[Settled], seconds: float) -> None:
        self.handled += len(results)
        if self.warm_rss is None and self.handled >= self.warmup:
            self.warm_rss = rss_bytes()
            self.samples.append((self.handled, self.warm_rss))
        elif self.handled >= self.next_sample:
            self.samples.append((self.handled, rss_bytes()))
        while self.next_sample <= self.handled:
            self.next_sample += self.step
        if self.handled >= self.expected:
            self.worker.stop()


def _ready_then_wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def _result(payload: dict[str, Any]) -> None:
    print("result " + json.dumps(payload), flush=True)


def _setup(args: argparse.Namespace) -> tuple[Target, Database[Any]]:
    target = Target(args.redis_url, consumer=args.consumer)
    database: Database[Any] = mongomock_ng.MongoClient()["bench"]
    return target, database


def _heartbeat_file() -> Path:
    return Path(tempfile.gettempdir()) / f"florist-bench-{os.getpid()}.heartbeat"


def _profiled(function: Callable[[], None], stem: Path) -> None:
    """Run ``function`` under pyinstrument; HTML and text profiles at ``stem``."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    function()
    profiler.stop()
    stem.with_suffix(".html").write_text(profiler.output_html())
    stem.with_suffix(".txt").write_text(profiler.output_text(unicode=True, color=False))


def latency(args: argparse.Namespace) -> None:
    target, database = _setup(args)
    workload = steady(args.jobs)
    insert_jobs(database, workload)
    settings = worker_settings(target, heartbeat_file=_heartbeat_file())
    client = connect_redis(settings)
    worker = Worker(client, database, settings)
    observer = LatencyObserver(worker, len(workload) * args.passes)
    worker.observers.append(observer)
    _ready_then_wait()
    if args.profile:
        _profiled(worker.run, Path(args.profile))
    else:
        worker.run()
    client.close()
    _result(
        {
            "latencies_s": observer.latencies,
            "span_s": observer.last_settled - (observer.first_sent or 0.0),
            "counts": dict(worker.counts),
            "problems": check_documents(database, workload)[:5],
        }
    )


def rss(args: argparse.Namespace) -> None:
    target, database = _setup(args)
    insert_jobs(database, steady(args.jobs))
    settings = worker_settings(target, heartbeat_file=_heartbeat_file())
    client = connect_redis(settings)
    worker = Worker(client, database, settings)
    observer = MemoryObserver(worker, args.events, args.warmup)
    worker.observers.append(observer)
    _ready_then_wait()
    worker.run()
    client.close()
    _result(
        {
            "handled": observer.handled,
            "counts": dict(worker.counts),
            "warm_rss": observer.warm_rss,
            "end_rss": rss_bytes(),
            "peak_rss": rss_peak_bytes(),
            "samples": observer.samples,
        }
    )


def consume(args: argparse.Namespace) -> None:
    target, database = _setup(args)
    insert_jobs(database, steady(args.jobs))
    _ready_then_wait()
    started = time.time()
    drained = drain_worker(target, database, 0)
    _result(
        {"started": started, "ended": time.time(), "handled": drained.handled, **drained.counts}
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.child", description=__doc__)
    parser.add_argument("mode", choices=("latency", "rss", "consume"))
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--consumer", default="bench-consumer-1")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--profile", help="latency: profile the worker into PROFILE.html/.txt")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging("info", "json", stream=sys.stderr)
    {"latency": latency, "rss": rss, "consume": consume}[args.mode](args)


if __name__ == "__main__":
    main()
