"""structlog, configured in one place: JSON lines for machines, readable lines for people."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR


def _current(stream: TextIO | None) -> TextIO:
    """``sys.stderr`` as it is now (test runners and daemons swap it), unless one was given."""
    return stream if stream is not None else sys.stderr


def configure_logging(
    level: str = "info", log_format: str = "auto", stream: TextIO | None = None
) -> None:
    """JSON lines when ``stream`` is not a terminal (containers, files), console lines on one.

    ``log_format`` may force ``json`` or ``console``.
    """
    target = stream or sys.stderr
    if log_format == "auto":
        log_format = "console" if target.isatty() else "json"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=target.isatty()))
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            LEVELS.get(level.lower(), logging.INFO)
        ),
        logger_factory=lambda *_: structlog.PrintLogger(_current(stream)),
        cache_logger_on_first_use=False,
    )
