"""What a spawned FL process does with the reporter it was handed (importable by name)."""

from __future__ import annotations

from florist_events import StreamMetricsReporter


def run_server(reporter: StreamMetricsReporter, rounds: int) -> None:
    """The tail of an FL server's run, in the child process."""
    for r in range(1, rounds + 1):
        reporter.report({"fit_round_start": f"start {r}"}, r)
        reporter.report({"loss": 0.1}, r, 1, 5)  # a per-step call: changes nothing
    reporter.report({"fit_end": "end", "host_type": "server"})
    reporter.report({"shutdown": "down"})
    reporter.shutdown()
    if reporter.pending:
        raise SystemExit(3)
