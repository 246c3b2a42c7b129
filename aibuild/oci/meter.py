"""Progress of a long transfer (export, compression, upload): bytes of the total, the rate
and an ETA, as lines through a ``Log``.

A meter's lines start with ``PROGRESS``: the CLI draws them in place on a terminal and
prints one every few seconds in a pipe (``aibuild.cli.options.stderr_log``); the line a
meter ends with is an ordinary one, so it is always shown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aibuild.logs import Log, silent

PROGRESS = "progress: "  # the prefix of a line that a later one replaces


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _eta(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Meter:
    """Counts bytes of one phase from any thread and reports at most every ``every`` s."""

    def __init__(
        self,
        phase: str,
        total: int,
        log: Log = silent,
        *,
        every: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.phase = phase
        self.total = max(0, total)
        self.done = 0
        self.log = log
        self.every = every
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = self.clock()
            if now - self._last < self.every:
                return
            self._last = now
            line = self.line(now)
        self.log(PROGRESS + line)

    def expect(self, n: int) -> None:
        """``n`` more bytes to come (a total that grows as work is handed in)."""
        with self._lock:
            self.total += n

    def line(self, now: float | None = None) -> str:
        """``compress: 1.2 GB of 3.4 GB (35%), 210.0 MB/s, ETA 10s``."""
        elapsed = max(1e-6, (self.clock() if now is None else now) - self.started)
        rate = self.done / elapsed
        text = f"{self.phase}: {size_text(self.done)}"
        if self.total:
            text += f" of {size_text(self.total)} ({100 * self.done / self.total:.0f}%)"
        text += f", {size_text(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_eta((self.total - self.done) / rate)}"
        return text

    def finish(self) -> float:
        """Report the phase's total and rate as an ordinary line; the seconds it took."""
        elapsed = max(1e-6, self.clock() - self.started)
        self.log(
            f"{self.phase}: {size_text(self.done)} in {elapsed:.1f}s "
            f"({size_text(self.done / elapsed)}/s)"
        )
        return elapsed
