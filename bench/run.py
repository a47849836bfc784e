"""Benchmark the worker against a plain redis-py loop, FastStream, and itself without a
store, on a private redis-server and the in-memory MongoDB; judge the issue's targets.

    python bench/run.py            # the full benchmark (several minutes)
    python bench/run.py --quick    # small sizes, under a minute: a smoke run, not figures
    python bench/run.py --profile A-steady   # one run under pyinstrument, nothing else

Results: a markdown table on stdout and in bench/results/latest.md, the same as JSON
in bench/results/latest.json (with the machine and the exact command).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)  # run as a script: import the bench package, not its modules
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from bench import machine, measure, report  # noqa: E402
from bench.server import PrivateRedis  # noqa: E402
from bench.systems import NAMES, SYSTEMS, BenchFailure, Target  # noqa: E402
from bench.workloads import Workload, backlog, steady  # noqa: E402
from worker.logs import configure_logging  # noqa: E402

RESULTS = REPO / "bench" / "results"
SECTIONS = ("throughput", "latency", "memory", "scaling")


@dataclass(frozen=True)
class Config:
    """Sizes of every measurement; ``QUICK`` shrinks them to fit in under a minute."""

    mode: str = "full"
    runs: int = 3
    steady_jobs: int = 100
    backlog_jobs: int = 4
    backlog_repeats: int = 10
    latency_rate: float = 1000.0
    latency_jobs: int = 100
    latency_passes: int = 4
    latency_small_jobs: int | None = 10  # a second row, where the store is cheap
    memory_events: int = 500_000
    memory_warmup: int = 50_000
    memory_jobs: int = 10
    scaling_jobs: int = 100
    scaling_passes: int = 3


FULL = Config()
QUICK = Config(
    mode="quick",
    steady_jobs=10,
    backlog_repeats=2,
    latency_jobs=10,
    latency_passes=4,
    latency_small_jobs=None,
    memory_events=10_000,
    memory_warmup=2_500,
    scaling_jobs=10,
    scaling_passes=1,
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def workloads(config: Config) -> dict[str, tuple[Workload, int]]:
    """Each throughput workload with how many times one run drains it."""
    return {
        "steady": (steady(config.steady_jobs), 1),
        "backlog": (backlog(config.backlog_jobs), config.backlog_repeats),
    }


def throughput_section(
    config: Config, systems: str, client: redis.Redis, target: Target
) -> tuple[dict[str, Any], dict[str, Any]]:
    section: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for name, (workload, repeats) in workloads(config).items():
        progress(f"throughput: {name}, {workload.describe()}, x{repeats} per run")
        measured = measure.throughput(
            workload, list(systems), config.runs, repeats, client, target, progress
        )
        medians = {system: measured.median(system) for system in systems}
        section[name] = {
            "description": workload.describe(),
            "repeats_per_run": repeats,
            "events_per_run": measured.events_per_run,
            "runs": {
                system: [round(rate, 1) for rate in rates]
                for system, rates in measured.runs.items()
            },
            "median": {system: round(rate, 1) for system, rate in medians.items()},
        }
        ratios[name] = {
            f"A/{other}": round(medians["A"] / medians[other], 3)
            for other in ("B", "C", "D")
            if "A" in medians and other in medians
        }
    return section, ratios


def scaling_section(
    config: Config, client: redis.Redis, target: Target, logs: Path
) -> dict[str, Any]:
    runs: dict[int, list[float]] = {1: [], 2: []}
    events = len(steady(config.scaling_jobs)) * config.scaling_passes
    progress(f"two consumers against one: {events:,} events")
    for round_number in range(config.runs):
        for processes in (1, 2):
            rate = measure.consumers(
                client, target, config.scaling_jobs, config.scaling_passes, processes, logs
            )
            runs[processes].append(round(rate, 1))
            progress(
                f"  round {round_number + 1}/{config.runs}, {processes} process(es): {rate:,.0f}/s"
            )
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    return {
        "events": events,
        "jobs": config.scaling_jobs,
        "passes": config.scaling_passes,
        "one": runs[1],
        "two": runs[2],
        "one_median": one,
        "two_median": two,
        "ratio": round(two / one, 3),
    }


def notes(config: Config, results: dict[str, Any]) -> list[str]:
    load = results["machine"]["load_average_at_start"]
    update_us = results.get("mongomock_update_us")
    lines = [
        "All systems write to mongomock-ng (in memory, in the consuming process). It has no "
        f"index: one update_one by _id on {config.steady_jobs} documents took {update_us} us "
        "here, growing with the collection, and this bounds every system; a real MongoDB "
        "moves all the limits.",
        f"Measured on {results['machine']['cores']} cores with a load average of {load} at "
        "start (other work was running): expect noise. Systems alternate run by run "
        "(A, B, C, D, A, ...) so that noise falls on all of them.",
        "Every run is checked: each event handled, nothing left pending, and (A, B, C) every "
        "job FINISHED_SUCCESSFULLY with the last snapshots stored.",
        f"Backlog: a run drains the {config.backlog_jobs}-job backlog "
        f"{config.backlog_repeats} times, each from a fresh stream and database (all "
        "XADDed before the consumer starts), to be long enough to time.",
        "B reads with decode_responses=True, writes each event with one unguarded "
        "update_one and acknowledges each batch with one XACK. C is FastStream's idiomatic "
        "handler (body: dict[str, str]) with max_records=200, per-message log lines off "
        "(logger=None), acknowledged by FastStream message by message; its group is "
        "created at 0 beforehand (FastStream's own would start at $ and miss the backlog).",
        f"Latency: this process XADDs the steady workload of {config.latency_jobs} jobs "
        f"{config.latency_passes} times at {config.latency_rate:,.0f} events/s, stamping "
        "time.time() in a bench_t field; the worker process records time.time() in a "
        "BatchObserver, i.e. after the batch is applied and acknowledged. The first "
        "second of events is warm-up and not counted. The target is judged on the first "
        "row; a second row, if any, has fewer jobs (cheaper mongomock updates), to tell "
        "the worker's own latency from the store's capacity.",
        f"Memory: the same {config.memory_jobs} jobs' events over and over (so the "
        "database stops growing after the first pass; later passes see rejected "
        "transitions and guarded re-reads), at most ~20,000 waiting; growth is RSS at the "
        "end against RSS after the warm-up; peak is VmHWM.",
        "Two consumers: each worker process has its own in-memory database (mongomock "
        "cannot be shared), so the store scales perfectly here and the documents cannot be "
        "checked (counts and the pending list are); the two workers and redis-server share "
        "the cores.",
    ]
    if config.mode == "quick":
        lines.insert(
            0,
            f"QUICK MODE: small sizes (steady {config.steady_jobs} jobs, backlog x"
            f"{config.backlog_repeats}, latency {config.latency_jobs} jobs x"
            f"{config.latency_passes}, memory over {config.memory_events:,} events with "
            f"{config.memory_warmup:,} warm-up instead of 500,000/50,000, two consumers on "
            f"{config.scaling_jobs} jobs): a check that everything runs, not figures to "
            "quote.",
        )
    return lines


def benchmark(config: Config, systems: str, skip: Sequence[str], logs: Path) -> dict[str, Any]:
    """Every section not skipped; ``logs`` gets redis-server's and the child processes' logs."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": config.mode,
        "command": shlex.join(sys.orig_argv),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "systems": {system: NAMES[system] for system in systems},
        "machine": machine.describe(),
        "mongomock_update_us": machine.mongomock_update_us(config.steady_jobs),
    }
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    with PrivateRedis(logs / "redis") as server:
        client = redis.Redis.from_url(server.url, socket_timeout=30)
        target = Target(server.url)
        try:
            if "throughput" not in skip:
                results["throughput"], results["ratios"] = throughput_section(
                    config, systems, client, target
                )
            if "latency" not in skip:
                progress(f"latency at {config.latency_rate:,.0f} events/s")
                results["latency"] = measure.latency(
                    client,
                    target,
                    config.latency_jobs,
                    config.latency_passes,
                    config.latency_rate,
                    logs,
                )
                if config.latency_small_jobs is not None:
                    progress(f"latency with {config.latency_small_jobs} jobs")
                    passes = config.latency_passes * config.latency_jobs
                    results["latency_small"] = measure.latency(
                        client,
                        target,
                        config.latency_small_jobs,
                        max(passes // config.latency_small_jobs, 1),
                        config.latency_rate,
                        logs,
                    )
            if "memory" not in skip:
                progress(f"memory over {config.memory_events:,} events")
                results["memory"] = measure.memory(
                    client,
                    target,
                    config.memory_events,
                    config.memory_warmup,
                    config.memory_jobs,
                    logs,
                )
            if "scaling" not in skip:
                results["scaling"] = scaling_section(config, client, target, logs)
        finally:
            client.close()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.judge(results)
    results["notes"] = notes(config, results)
    return results


def profile(spec: str, config: Config, results_dir: Path) -> None:
    """One run of ``SYSTEM-WORKLOAD`` under pyinstrument: HTML and text next to the results."""
    from pyinstrument import Profiler

    system, _, name = spec.partition("-")
    if spec == "A-latency":
        profile_latency(config, results_dir)
        return
    chosen = workloads(config)
    if system not in SYSTEMS or name not in chosen:
        raise SystemExit(
            f"--profile wants SYSTEM-WORKLOAD or A-latency, e.g. A-steady; got {spec!r}"
        )
    workload, repeats = chosen[name]
    profiler = Profiler(interval=0.001)
    seconds = 0.0
    with (
        tempfile.TemporaryDirectory(prefix="florist-bench-") as scratch,
        PrivateRedis(Path(scratch) / "redis") as server,
    ):
        client = redis.Redis.from_url(server.url, socket_timeout=30)
        target = Target(server.url)
        for _ in range(repeats):  # as one run of the benchmark; sessions add up
            database = measure.prepare(client, target, workload)
            profiler.start()
            drained = SYSTEMS[system](target, database, len(workload))
            profiler.stop()
            seconds += drained.seconds
            measure.verify(system, drained, workload, database, client, target)
        client.close()
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"profile-{spec}"
    stem.with_suffix(".html").write_text(profiler.output_html())
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    stem.with_suffix(".txt").write_text(text)
    rate = len(workload) * repeats / seconds
    events = len(workload) * repeats
    print(f"{spec}: {events:,} events, {rate:,.0f}/s under the profiler\n{text}")
    progress(f"wrote {stem}.html and {stem}.txt")


def write_results(results: dict[str, Any], directory: Path) -> str:
    """latest.json and latest.md in ``directory``; returns the markdown page."""
    page = report.markdown(results)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (directory / "latest.md").write_text(page)
    return page


def profile_latency(config: Config, results_dir: Path) -> None:
    """The latency run with its worker process under pyinstrument."""
    stem = results_dir / "profile-A-latency"
    results_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="florist-bench-") as scratch,
        PrivateRedis(Path(scratch) / "redis") as server,
    ):
        client = redis.Redis.from_url(server.url, socket_timeout=30)
        figures = measure.latency(
            client,
            Target(server.url),
            config.latency_jobs,
            config.latency_passes,
            config.latency_rate,
            Path(scratch),
            profile=stem,
        )
        client.close()
    print(json.dumps(figures, indent=2))
    print(stem.with_suffix(".txt").read_text())
    progress(f"wrote {stem}.html and {stem}.txt")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--runs", type=int, help="runs per system (median of them; min 3)")
    parser.add_argument(
        "--systems", default="ABCD", help="throughput systems to run (default ABCD; A is needed)"
    )
    parser.add_argument(
        "--skip", action="append", choices=SECTIONS, default=[], help="leave a section out"
    )
    parser.add_argument("--memory-events", type=int, help="events of the memory run")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="SYSTEM-WORKLOAD",
        help="only profile: one run (A-steady, B-backlog, ...) or the latency run "
        "(A-latency); repeatable",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 3:
        parser.error("--runs must be at least 3 (the figures are medians)")
    if "A" not in args.systems or set(args.systems) - set(SYSTEMS):
        parser.error("--systems takes letters of ABCD and must include A")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in [name for name in os.environ if name.startswith("FLORIST_")]:
        del os.environ[name]  # default settings, whatever the shell exports
    configure_logging("info", "json", stream=sys.stderr)
    config = QUICK if args.quick else FULL
    if args.runs is not None:
        config = replace(config, runs=args.runs)
    if args.memory_events is not None:
        config = replace(
            config, memory_events=args.memory_events, memory_warmup=args.memory_events // 10
        )
    if args.profile:
        for spec in args.profile:
            profile(spec, config, args.results)
        return 0
    systems = "".join(system for system in "ABCD" if system in args.systems)
    try:
        results = benchmark(config, systems, args.skip, args.results / "logs")
    except BenchFailure as error:
        progress(f"benchmark FAILED, no figures written: {error} (logs: {args.results}/logs)")
        return 1
    print(write_results(results, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
