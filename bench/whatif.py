"""What-if: candidate hot-path fixes to worker code, tried as monkeypatches, measured.

The benchmark must not edit the worker; this script patches it in its own process
only, to put numbers on a proposed change before anyone makes it:

* ``depth``: :func:`worker.jsontext.nesting_depth` pushes every scalar of the metrics
  onto its stack; pushing only containers gives the same depth for less than half
  the work;
* ``log``: ``Worker._record`` calls ``log.debug`` per entry on structlog's lazy proxy,
  which (with ``cache_logger_on_first_use=False``) binds a new logger on each call;
  binding once per batch makes the filtered call free;
* ``lazy``: ``plan_batch`` parses and validates every entry (JSON, depth, pydantic),
  then throws away the metrics of the coalesced ones; deciding coalescing from the
  envelope (type, job, client, position; ``"fit_end"`` absent from the text) and
  parsing only the survivors saves most of a backlog's parsing.

    python -m bench.whatif --workload backlog --systems AD --variants base,depth,log,lazy,all

Reports the median events/s and CPU microseconds per event of each variant; every
run is checked like the benchmark's, and each variant must give the same outcomes.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

import worker.consumer
import worker.events
from bench import measure
from bench.server import PrivateRedis
from bench.systems import SYSTEMS, Target
from bench.workloads import Workload, backlog, steady
from worker.batch import Planned, plan_batch, plan_entry
from worker.events import CLIENT_METRICS, SERVER_METRICS, Limits
from worker.logs import configure_logging
from worker.positions import InvalidStreamId, StreamPosition
from worker.stream import Entry

# (module, attribute) -> the original object; patched with setattr, restored by "base".
ORIGINALS: dict[tuple[Any, str], Any] = {
    (module, name): getattr(module, name)
    for module, name in (
        (worker.events, "nesting_depth"),
        (worker.consumer, "plan_batch"),
        (worker.consumer, "log"),
    )
}


def container_depth(value: Any) -> int:
    """:func:`worker.jsontext.nesting_depth`'s result, iteratively (hostile nesting is
    still safe), but only containers go on the stack: scalars are the bulk of a
    snapshot and need no visit of their own."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return deepest


Head = tuple[tuple[str, ...], StreamPosition, bool]


def _envelope(entry: Entry) -> Head | None:
    """Target, position, and whether it may be coalesced, of a metrics snapshot,
    without parsing its metrics; ``None`` when it is no well-formed snapshot."""
    fields = entry.fields
    if fields is None or fields.get(b"v") != b"1":
        return None
    kind, job, metrics = fields.get(b"type"), fields.get(b"job_id"), fields.get(b"metrics")
    if not job or metrics is None:
        return None
    try:
        origin = fields.get(b"origin_id")
        position = StreamPosition.parse(origin if origin is not None else entry.id)
        if kind == SERVER_METRICS.encode():
            # Maybe finishing (a top-level fit_end): it supersedes, but is never coalesced.
            return ("server", job.decode()), position, b'"fit_end"' not in metrics
        client = fields.get(b"client_uuid")
        if kind == CLIENT_METRICS.encode() and client:
            return ("client", job.decode(), client.decode()), position, True
    except (InvalidStreamId, UnicodeDecodeError):
        return None
    return None


def lazy_plan_batch(entries: Sequence[Entry], limits: Limits) -> list[Planned]:
    """``plan_batch`` that parses only the snapshots it will not coalesce; falls back
    to the full plan if a snapshot that supersedes others turns out invalid (those
    must then be applied, as ``plan_batch`` would)."""
    heads = [_envelope(entry) for entry in entries]
    newest: dict[tuple[str, ...], tuple[StreamPosition, str]] = {}
    for entry, head in zip(entries, heads, strict=True):
        if head is not None and (head[0] not in newest or newest[head[0]][0] < head[1]):
            newest[head[0]] = (head[1], entry.id)
    planned: list[Planned] = []
    for entry, head in zip(entries, heads, strict=True):
        if head is not None and head[2] and head[1] < newest[head[0]][0]:
            planned.append(Planned(entry, coalesced_into=newest[head[0]][1]))
            continue
        item = plan_entry(entry, limits)
        if head is not None and item.event is None:
            return plan_batch(entries, limits)
        planned.append(item)
    return planned


def apply_variant(variant: str) -> None:
    """Patch the worker for ``variant`` (``base`` restores the original code)."""
    chosen = set(variant.split("+")) if variant != "all" else {"depth", "log", "lazy"}
    for (module, name), original in ORIGINALS.items():
        setattr(module, name, original)
    if "depth" in chosen:
        setattr(worker.events, "nesting_depth", container_depth)  # noqa: B010
    if "log" in chosen:
        setattr(worker.consumer, "log", ORIGINALS[(worker.consumer, "log")].bind())  # noqa: B010
    if "lazy" in chosen:
        setattr(worker.consumer, "plan_batch", lazy_plan_batch)  # noqa: B010


def measure_variants(
    workload: Workload, system: str, variants: Sequence[str], runs: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (events/s, CPU us/event) per variant, variants alternating run by run."""
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    cpu: dict[str, list[float]] = {variant: [] for variant in variants}
    outcomes: dict[str, dict[str, int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="florist-whatif-") as scratch,
        PrivateRedis(Path(scratch) / "redis") as server,
    ):
        client = redis.Redis.from_url(server.url, socket_timeout=30)
        target = Target(server.url)
        for _ in range(runs):
            for variant in variants:
                apply_variant(variant)
                seconds = cpu_seconds = 0.0
                for _ in range(repeats):
                    database = measure.prepare(client, target, workload)
                    gc.collect()
                    before = time.process_time()
                    drained = SYSTEMS[system](target, database, len(workload))
                    cpu_seconds += time.process_time() - before
                    seconds += drained.seconds
                    measure.verify(system, drained, workload, database, client, target)
                    if outcomes.setdefault(variant, drained.counts) != drained.counts:
                        raise AssertionError(f"{variant}: outcomes changed between runs")
                events = len(workload) * repeats
                rates[variant].append(events / seconds)
                cpu[variant].append(cpu_seconds / events * 1e6)
        client.close()
    apply_variant("base")
    if len({str(sorted(counts.items())) for counts in outcomes.values()}) > 1:
        print(f"note: outcomes differ between variants: {outcomes}", file=sys.stderr)
    return {v: (statistics.median(rates[v]), statistics.median(cpu[v])) for v in variants}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.whatif", description=__doc__)
    parser.add_argument("--workload", choices=("steady", "backlog"), default="backlog")
    parser.add_argument("--jobs", type=int, help="jobs of the workload (default 100 / 4)")
    parser.add_argument("--systems", default="AD", help="of A and D (the worker ones)")
    parser.add_argument("--variants", default="base,depth,log,lazy,all")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="drains per run")
    args = parser.parse_args(argv)
    configure_logging("info", "json", stream=sys.stderr)
    build = steady if args.workload == "steady" else backlog
    workload = build(args.jobs or (100 if args.workload == "steady" else 4))
    variants = args.variants.split(",")
    print(f"{workload.describe()}, {args.runs} runs x {args.repeats} drains per variant")
    print("| system | variant | events/s | CPU us/event | CPU / base |")
    print("| --- | --- | --- | --- | --- |")
    for system in args.systems:
        figures = measure_variants(workload, system, variants, args.runs, args.repeats)
        base = figures.get("base")
        for variant, (rate, cpu_us) in figures.items():
            change = f"{cpu_us / base[1]:.2f}" if base else "-"
            print(f"| {system} | {variant} | {rate:,.0f} | {cpu_us:.1f} | {change} |")


if __name__ == "__main__":
    main()
