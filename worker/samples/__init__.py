"""The sample job and its 3-round run, shipped inside the package.

Embedded so that ``florist-worker demo`` works from an installed wheel with nothing
else on disk. ``job.json`` is a Job document as the FLorist API stores it before
training; ``job_run.jsonl`` holds the events that run publishes, one entry per line,
with ``metrics`` as a nested object (it goes on the wire as JSON text).
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

__all__ = ["load_job_document", "load_run_events"]


def _text(name: str) -> str:
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_job_document() -> dict[str, Any]:
    """A fresh copy of the sample Job document (status NOT_STARTED, two clients)."""
    document: dict[str, Any] = json.loads(_text("job.json"))
    return document


def load_run_events() -> list[dict[str, Any]]:
    """The sample run's events in publishing order, ``metrics`` as dicts."""
    return [json.loads(line) for line in _text("job_run.jsonl").splitlines() if line.strip()]
