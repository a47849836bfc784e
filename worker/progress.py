"""A one-line progress bar for long commands, drawn on a terminal and nowhere else.

Written with ``\\r`` on standard error so it never mixes with a command's output on
stdout, and only when that stream is a terminal: in a pipe, a log file or a
container it would be noise. No dependency: a bar, a count, a rate and an ETA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

BAR_WIDTH: Final = 30
REDRAW_INTERVAL_S: Final = 0.1


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, whole_seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{whole_seconds:02d}"


class ProgressBar:
    """``label [#####.....]  45%  1234/2700  812/s  ETA 0:00:02``.

    ``total`` may be an estimate (or ``None``): the bar never passes 100 % before
    :meth:`close`, and a count above the estimate raises the total to the count.
    """

    def __init__(
        self,
        total: int | None,
        *,
        label: str = "",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._last_draw = float("-inf")
        self._drawn = False

    def update(self, done: int) -> None:
        """Record ``done`` items so far; redraws at most every 0.1 s."""
        self.done = done
        now = self.clock()
        if now - self._last_draw >= REDRAW_INTERVAL_S:
            self._last_draw = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line (only if anything was drawn)."""
        if self._drawn or self.done:
            self._draw(self.clock(), final=True)
            self.stream.write("\n")
            self.stream.flush()

    def render(self, now: float, *, final: bool = False) -> str:
        """The line as it would be drawn at ``now``."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [self.label] if self.label else []
        total = self.total if self.total is None else max(self.total, self.done)
        if total:
            fraction = 1.0 if final else min(self.done / total, 0.99)
            filled = int(fraction * BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}")
            parts.append(f"{self.done}/{total}")
        else:
            parts.append(str(self.done))
        parts.append(f"{rate:.0f}/s")
        if final:
            parts.append(f"in {_duration(elapsed)}")
        elif total and rate > 0:
            parts.append(f"ETA {_duration(max(total - self.done, 0) / rate)}")
        return "  ".join(parts)

    def _draw(self, now: float, *, final: bool = False) -> None:
        # \x1b[K clears what a longer previous line left behind.
        self.stream.write(f"\r{self.render(now, final=final)}\x1b[K")
        self.stream.flush()
        self._drawn = True


def progress_bar(
    total: int | None, *, label: str = "", stream: TextIO | None = None
) -> ProgressBar | None:
    """A bar on ``stream`` (standard error by default) if it is a terminal, else ``None``."""
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    if isatty is None or not isatty():
        return None
    return ProgressBar(total, label=label, stream=target)
