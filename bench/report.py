"""Targets judged PASS or MISS, and the results as a markdown page.

The JSON document built by :mod:`bench.run` is the single source: the markdown is
rendered from it, so the two outputs cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.systems import NAMES

Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One goal from the issue: where its figure is in the results, and the bar."""

    name: str
    unit: str
    figure: Callable[[Results], float | None]
    passes: Callable[[float], bool]


def _dig(results: Results, *path: str) -> float | None:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


TARGETS = (
    Target(
        "A >= 0.9 x B on steady",
        "x",
        lambda r: _dig(r, "ratios", "steady", "A/B"),
        lambda v: v >= 0.9,
    ),
    Target(
        "A >= 3 x B on backlog",
        "x",
        lambda r: _dig(r, "ratios", "backlog", "A/B"),
        lambda v: v >= 3,
    ),
    Target(
        "A >= 4 x C on steady",
        "x",
        lambda r: _dig(r, "ratios", "steady", "A/C"),
        lambda v: v >= 4,
    ),
    Target(
        "A >= 4 x C on backlog",
        "x",
        lambda r: _dig(r, "ratios", "backlog", "A/C"),
        lambda v: v >= 4,
    ),
    Target(
        "p99 < 25 ms at 1,000 events/s",
        "ms",
        lambda r: _dig(r, "latency", "p99_ms"),
        lambda v: v < 25,
    ),
    Target(
        "RSS growth < 5 %",
        "%",
        lambda r: _dig(r, "memory", "growth_pct"),
        lambda v: v < 5,
    ),
    Target(
        "two consumers >= 1.7 x one",
        "x",
        lambda r: _dig(r, "scaling", "ratio"),
        lambda v: v >= 1.7,
    ),
)


def judge(results: Results) -> list[dict[str, Any]]:
    """Each target with its figure and PASS, MISS, or "not measured"."""
    verdicts = []
    for target in TARGETS:
        figure = target.figure(results)
        verdict = "not measured"
        if figure is not None:
            verdict = "PASS" if target.passes(figure) else "MISS"
        verdicts.append(
            {"target": target.name, "figure": figure, "unit": target.unit, "result": verdict}
        )
    return verdicts


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _throughput(results: Results) -> list[str]:
    section = results.get("throughput")
    if not section:
        return []
    systems = [s for s in ("A", "B", "C", "D") if any(s in w["runs"] for w in section.values())]
    header = " | ".join(f"{s}: {NAMES[s]}" for s in systems)
    lines = [
        "## Throughput (events/s, median of the runs; each run in brackets)",
        "",
        f"| workload | events per run | {header} | A/B | A/C |",
        "|" + " --- |" * (len(systems) + 4),
    ]
    for name, workload in section.items():
        cells = []
        for system in systems:
            runs = workload["runs"].get(system)
            if runs is None:
                cells.append("-")
                continue
            each = ", ".join(_number(rate) for rate in runs)
            cells.append(f"**{_number(workload['median'][system])}** ({each})")
        ratios = results.get("ratios", {}).get(name, {})
        lines.append(
            f"| {name}: {workload['description']} | {workload['events_per_run']:,} | "
            + " | ".join(cells)
            + f" | {_number(ratios.get('A/B'), 2)} | {_number(ratios.get('A/C'), 2)} |"
        )
    return [*lines, ""]


def _latency_row(section: dict[str, Any]) -> str:
    return (
        f"| {section['jobs']} | {section['events']:,} ({section['measured_events']:,}) "
        f"| {_number(section['offered_rate'])} | {_number(section['achieved_rate'])} "
        f"| {_number(section['applied_rate'])} | {section['p50_ms']} | {section['p90_ms']} "
        f"| {section['p99_ms']} | {section['max_ms']} "
        f"| {', '.join(str(value) for value in section['p99_ms_by_tenth'])} |"
    )


def _latency(results: Results) -> list[str]:
    rows = [results[key] for key in ("latency", "latency_small") if results.get(key)]
    if not rows:
        return []
    return [
        "## Latency of A, XADD to applied and acknowledged",
        "",
        "| jobs | events (measured) | offered/s | achieved/s | applied/s "
        "| p50 ms | p90 ms | p99 ms | max ms | p99 ms per tenth of the run |",
        "|" + " --- |" * 10,
        *(_latency_row(row) for row in rows),
        "",
        "p99 rising tenth by tenth means the worker fell behind the offered rate.",
        "",
    ]


def _memory(results: Results) -> list[str]:
    section = results.get("memory")
    if not section:
        return []
    samples = ", ".join(f"{count:,}: {mib}" for count, mib in section["samples_mib"])
    return [
        "## Memory of A (worker process alone)",
        "",
        "| events | jobs | RSS after warm-up | RSS at end | peak RSS | growth |",
        "|" + " --- |" * 6,
        f"| {section['events']:,} (warm-up {section['warmup_events']:,}) | {section['jobs']} "
        f"| {section['rss_warm_mib']} MiB | {section['rss_end_mib']} MiB "
        f"| {section['rss_peak_mib']} MiB | {section['growth_pct']} % |",
        "",
        f"RSS (MiB) after n events: {samples}",
        "",
    ]


def _scaling(results: Results) -> list[str]:
    section = results.get("scaling")
    if not section:
        return []
    one = ", ".join(_number(rate) for rate in section["one"])
    two = ", ".join(_number(rate) for rate in section["two"])
    return [
        "## Two worker processes in one group against one",
        "",
        "| events | one process (events/s) | two processes (events/s) | two / one |",
        "| --- | --- | --- | --- |",
        f"| {section['events']:,} | **{_number(section['one_median'])}** ({one}) "
        f"| **{_number(section['two_median'])}** ({two}) | {_number(section['ratio'], 2)} |",
        "",
    ]


def _targets(results: Results) -> list[str]:
    lines = ["## Targets", "", "| target | figure | result |", "| --- | --- | --- |"]
    for verdict in results["targets"]:
        figure = verdict["figure"]
        shown = "-" if figure is None else f"{figure:,.2f} {verdict['unit']}"
        lines.append(f"| {verdict['target']} | {shown} | **{verdict['result']}** |")
    return [*lines, ""]


def markdown(results: Results) -> str:
    machine = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines = [
        f"# florist-worker benchmark ({results['mode']})",
        "",
        f"Command: `{results['command']}`  ",
        f"Started {results['started_at']}, took {results['duration_s']:.0f} s.  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
        f"{machine['os']}, Python {machine['python']}, redis-server {machine['redis_server']} "
        f"(private instance); load average at start {machine['load_average_at_start']}.  ",
        f"Packages: {packages}.",
        "",
        *_targets(results),
        *_throughput(results),
        *_latency(results),
        *_memory(results),
        *_scaling(results),
        "## Notes",
        "",
        *(f"- {note}" for note in results["notes"]),
        "",
    ]
    return "\n".join(lines)
