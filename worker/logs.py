"""structlog, configured in one place: JSON lines for machines, readable lines for people.

The command line calls :func:`configure_logging`: every line goes to stderr (stdout is
kept for a command's output), as JSON when stderr is not a terminal.

Used as a library, the worker leaves logging to the application. If structlog has not
been configured when ``worker`` is imported, :func:`use_default_logging` (run by
``worker/__init__.py``) sets two things: a level filter at info, so that an application
that never configures structlog does not get a debug line per event, and stderr as the
destination, so that the application's stdout stays its own; the rest (the readable
renderer) stays structlog's default. An application that calls ``structlog.configure``
replaces what it passes (``wrapper_class`` for the level, ``logger_factory`` for the
destination); one that configured structlog before importing ``worker`` is left alone.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

import structlog

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS: Final = ("json", "console", "auto")
LIBRARY_LEVEL: Final = logging.INFO


def _current(stream: TextIO | None) -> TextIO:
    """``sys.stderr`` as it is now (test runners and daemons swap it), unless one was given."""
    return stream if stream is not None else sys.stderr


def use_default_logging() -> bool:
    """If structlog is unconfigured, log at info and above to stderr (and change nothing
    else); True when it did. Never touches a configuration an application has set."""
    if structlog.is_configured():
        return False
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(LIBRARY_LEVEL),
        logger_factory=lambda *_: structlog.PrintLogger(_current(None)),
    )
    return True


def configure_logging(
    level: str = "info", log_format: str = "auto", stream: TextIO | None = None
) -> None:
    """JSON lines when ``stream`` (stderr by default) is not a terminal (containers,
    files), console lines on one. ``log_format`` may force ``json`` or ``console``.

    ``level`` is one of debug, info, warning, error and ``log_format`` one of json,
    console, auto (any case); anything else raises ``ValueError``.
    """
    level_number = LEVELS.get(level.strip().lower())
    if level_number is None:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    log_format = log_format.strip().lower()
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(FORMATS)}")
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
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=lambda *_: structlog.PrintLogger(_current(stream)),
        cache_logger_on_first_use=False,
    )
