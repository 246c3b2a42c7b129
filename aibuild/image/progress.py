"""Build progress: the classic builder's JSON stream -> events, and the reporters that show them."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from aibuild.errors import BuildError

LOG_TAIL_LINES = 20
_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


_PACKAGE_INSTALL_RE = re.compile(
    r"\b(pip3?|uv pip|python3? -m pip)\b.*\binstall\b|\bapt-get\b.*\binstall\b|\bapt\b.*\binstall\b"
)


@dataclass
class BuildStep:
    """One Dockerfile instruction as the engine ran it."""

    index: int
    total: int
    instruction: str
    cached: bool = False
    duration: float = 0.0
    output_lines: int = 0

    @property
    def installs_packages(self) -> bool:
        """Whether this step installs packages (pip, uv pip, apt-get)."""
        return self.instruction.startswith("RUN") and bool(
            _PACKAGE_INSTALL_RE.search(self.instruction)
        )


@dataclass(frozen=True)
class BuildEvent:
    """Something a reporter may show.

    kind: "step" (a step started), "cached" (it hit the cache), "output" (a line it
    printed), "step-done" (it finished; ``duration``), "status" (engine status such
    as a base image pull), "done" (the image id in ``text``).
    """

    kind: str
    step: BuildStep | None = None
    text: str = ""
    duration: float = 0.0


class BuildProgress:
    """Parses the classic builder's decoded chunks into events, keeping what a failure needs.

    Pure: feed it dicts, read events back. The engine splits output anywhere, so
    ``stream`` text is re-assembled into whole lines before it is interpreted.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._partial = ""
        self._started = 0.0
        self.steps: list[BuildStep] = []
        self.image_id: str | None = None
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    @property
    def current(self) -> BuildStep | None:
        return self.steps[-1] if self.steps else None

    def feed(self, chunk: Any) -> list[BuildEvent]:
        """Events for one decoded chunk; raises BuildError for an error chunk."""
        if not isinstance(chunk, Mapping):
            return []
        if "error" in chunk or "errorDetail" in chunk:
            self._raise(chunk)
        events: list[BuildEvent] = []
        aux = chunk.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
            self.image_id = aux["ID"]
        if "stream" in chunk:
            self._partial += str(chunk["stream"])
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                events.extend(self._line(line.rstrip("\r")))
        elif "status" in chunk:
            status = str(chunk["status"])
            if chunk.get("id"):
                status = f"{chunk['id']}: {status}"
            if chunk.get("progress"):
                status = f"{status} {chunk['progress']}"
            events.append(BuildEvent("status", self.current, status))
        return events

    def finish(self) -> list[BuildEvent]:
        """Events at the end of the stream (the last step's end, the image id)."""
        events: list[BuildEvent] = []
        if self._partial.strip():
            events.extend(self._line(self._partial))
        self._partial = ""
        events.extend(self._end_step())
        if self.image_id is None:
            raise BuildError(
                "the build ended without producing an image (the engine closed the stream)",
                step=self.current.instruction if self.current else "",
                log_tail=list(self.tail),
            )
        events.append(BuildEvent("done", None, self.image_id))
        return events

    def _line(self, line: str) -> list[BuildEvent]:
        match = _STEP_RE.match(line)
        if match:
            events = self._end_step()
            new = BuildStep(int(match[1]), int(match[2]), match[3].strip())
            self.steps.append(new)
            self._started = self._clock()
            self.tail.clear()
            events.append(BuildEvent("step", new, new.instruction))
            return events
        step = self.current
        stripped = line.strip()
        if stripped == "---> Using cache":
            if step is not None:
                step.cached = True
            return [BuildEvent("cached", step)]
        if (
            stripped.startswith("---> ")
            or stripped.startswith("Removing intermediate container")
            or not stripped
        ):
            return []  # engine bookkeeping: layer ids, "Running in", cleanup
        if stripped.startswith("Successfully built "):
            if self.image_id is None:
                self.image_id = stripped.split()[-1]
            return self._end_step()
        if stripped.startswith("Successfully tagged "):
            return []
        self.tail.append(line)
        if step is not None:
            step.output_lines += 1
        return [BuildEvent("output", step, line)]

    def _end_step(self) -> list[BuildEvent]:
        step = self.current
        if step is None or self._started == 0.0:
            return []
        step.duration = round(self._clock() - self._started, 3)
        self._started = 0.0
        return [BuildEvent("step-done", step, duration=step.duration)]

    def _raise(self, chunk: Mapping[str, Any]) -> None:
        detail = chunk.get("errorDetail")
        message = chunk.get("error") or (
            detail.get("message") if isinstance(detail, Mapping) else None
        )
        if self._partial.strip():
            self.tail.append(self._partial.rstrip())
            self._partial = ""
        step = self.current
        where = f"step {step.index}/{step.total}" if step else "the build"
        raise BuildError(
            f"{where} failed: {str(message or 'unknown error').strip()}",
            step=step.instruction if step else "",
            log_tail=list(self.tail),
        )


class Reporter(Protocol):
    def event(self, event: BuildEvent) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


def _step_label(step: BuildStep) -> str:
    return f"Step {step.index}/{step.total}"


class QuietReporter:
    """Shows nothing (``--quiet``; ``--json`` without a terminal)."""

    def event(self, event: BuildEvent) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainReporter:
    """Plain lines for pipes and CI logs: each step, its output, whether cached, its time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def event(self, event: BuildEvent) -> None:
        step = event.step
        if event.kind == "step" and step is not None:
            self._print(f"{_step_label(step)} : {step.instruction}")
        elif event.kind == "cached":
            self._print(" ---> Using cache")
        elif event.kind == "output":
            self._print(f"  {event.text}")
        elif event.kind == "status" and not event.text.endswith("]"):
            self._print(f"  {event.text}")  # pull status lines, not their progress bars
        elif event.kind == "step-done" and step is not None and not step.cached:
            self._print(f" ---> done in {event.duration:.1f}s")

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        pass


class LiveReporter:
    """A live display for terminals: a line per finished step, a status line for the current."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._status = ""
        self._last_draw = 0.0

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def _draw(self, text: str) -> None:
        self.stream.write("\r\033[K" + text[: self._width()])
        self.stream.flush()
        self._status = text

    def _commit(self, text: str) -> None:
        self.stream.write("\r\033[K" + text[: self._width()] + "\n")
        self.stream.flush()
        self._status = ""

    def event(self, event: BuildEvent) -> None:
        step = event.step
        if step is None:
            if event.kind == "status":
                self._draw(f"  {event.text}")
            return
        label = f"[{step.index}/{step.total}] {step.instruction}"
        if event.kind == "step":
            self._draw(label)
        elif event.kind in ("output", "status"):
            now = time.monotonic()
            if now - self._last_draw > 0.1:  # at most ten redraws a second
                self._last_draw = now
                self._draw(f"{label[:60]}  │ {event.text.strip()}")
        elif event.kind == "cached":
            self._draw(f"{label}  (cached)")
        elif event.kind == "step-done":
            how = "cached" if step.cached else f"{event.duration:6.1f}s"
            width = self._width()
            room = max(10, width - 10)
            self._commit(f"{label[:room]:<{room}} {how:>8}")

    def message(self, text: str) -> None:
        if self._status:
            self._commit(self._status)
        self._commit(text)

    def close(self) -> None:
        if self._status:
            self._commit(self._status)


def reporter_for(stream: TextIO, *, quiet: bool = False) -> Reporter:
    """The reporter that suits ``stream``: nothing, a live display on a TTY, else plain lines."""
    if quiet:
        return QuietReporter()
    if stream.isatty() and os.environ.get("TERM", "") != "dumb":
        return LiveReporter(stream)
    return PlainReporter(stream)
