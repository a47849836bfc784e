"""Publish a run through florist_events, in another interpreter (run as a script).

tests/test_producer_pythons.py runs this with the Python 3.10 of a virtualenv that has
only florist-events and pydantic 1 installed: it imports nothing of the worker. It reads
one JSON document on stdin::

    {"url": "redis://...", "stream": "...", "job_id": "...",
     "steps": [{"status": "IN_PROGRESS"} | {"host": "server" | <client uuid>,
                                           "data": {...}, "round": 1 | null}, ...]}

and plays the steps as the FL processes would: statuses through an EventPublisher, each
host's reports through a StreamMetricsReporter of its own (by job id), then shutdown. It
prints one JSON line: the Python version, the pydantic version beside it, and what
each reporter left pending.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from florist_events import EventPublisher, StreamMetricsReporter


def main() -> int:
    plan: dict[str, Any] = json.load(sys.stdin)
    publisher = EventPublisher.from_url(plan["url"], plan["stream"], timeout_s=5)
    job_id = plan["job_id"]
    reporters: dict[str, StreamMetricsReporter] = {}
    for step in plan["steps"]:
        if "status" in step:
            publisher.status(job_id, step["status"])
            continue
        host = step["host"]
        if host not in reporters:
            if host == "server":
                reporters[host] = StreamMetricsReporter(publisher, job_id, host_type="server")
            else:
                reporters[host] = StreamMetricsReporter(
                    publisher, job_id, host_type="client", client_uuid=host
                )
        reporters[host].report(step["data"], round=step["round"])
    for reporter in reporters.values():
        reporter.shutdown()
    try:
        import pydantic  # only to show what sits beside the producer

        pydantic_version = str(pydantic.VERSION)
    except ImportError:
        pydantic_version = None
    print(
        json.dumps(
            {
                "python": list(sys.version_info[:3]),
                "pydantic": pydantic_version,
                "pending": sorted(host for host, r in reporters.items() if r.pending),
            }
        )
    )
    publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
