"""The producer library, re-exported: it lives in the ``florist-events`` distribution.

FL processes (FLorist's server and clients, on Python 3.10 with pydantic 1) install
``florist-events`` alone (``pip install ./producer``); the worker depends on it. This module
keeps ``from worker.producer import EventPublisher, StreamMetricsReporter`` working.
"""

from __future__ import annotations

from florist_events import (
    DEFAULT_MAXLEN,
    DEFAULT_PUBLISH_TIMEOUT_S,
    DEFAULT_STREAM,
    EventPublisher,
    InvalidEvent,
    StreamMetricsReporter,
    jsonable,
)

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_PUBLISH_TIMEOUT_S",
    "DEFAULT_STREAM",
    "EventPublisher",
    "InvalidEvent",
    "StreamMetricsReporter",
    "jsonable",
]
