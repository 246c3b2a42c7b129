"""Everything a run reports, written in one place: :class:`MetricsWriter`.

Console lines for people (an updating progress line on a TTY, plain lines
otherwise; warnings on stderr) and the files for programs: ``metrics.jsonl``
(one JSON record per logged step and per evaluation) and ``summary.json``.
Only rank 0 reports; a dry run writes no files.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from aibuild.errors import TrainError
from aibuild.train.checkpoint import atomic_write


class MetricsWriter:
    """Console lines and metrics files of one run (rank 0 only; files unless ``output`` is None)."""

    def __init__(self, enabled: bool, stream: TextIO | None, output: Path | None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.output = output if enabled else None
        self._open_line = False
        self._file: TextIO | None = None

    # -- console --------------------------------------------------------------------------

    def progress(self, text: str) -> None:
        """A line that the next one replaces on a TTY."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def warn(self, text: str) -> None:
        """``warning: TEXT`` on stderr (rank 0 only, like every line of the reporter)."""
        if self.enabled:
            warn_every_rank(text)

    # -- records --------------------------------------------------------------------------

    def open(self) -> None:
        """Open ``metrics.jsonl`` for appending (a resumed run continues it)."""
        if self.output is not None and self._file is None:
            path = self.output / "metrics.jsonl"
            try:
                self._file = path.open("a", encoding="utf-8")
            except OSError as exc:
                raise TrainError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _record(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:
            raise TrainError(f"cannot write {self._file.name}: {exc.strerror or exc}") from None

    def train_step(
        self,
        *,
        step: int,
        epoch: int,
        epochs: int,
        total_steps: int,
        loss: float,
        lr: float,
        rate: float,
        elapsed: float,
    ) -> None:
        """A logged optimizer step: one metrics record and the progress line."""
        self._record(
            {
                "type": "train",
                "step": step,
                "epoch": epoch,
                "loss": round(loss, 6),
                "lr": lr,
                "samples_per_s": round(rate, 2),
                "elapsed_s": round(elapsed, 3),
            }
        )
        self.progress(
            f"epoch {epoch}/{epochs} step {step}/{total_steps} "
            f"loss {loss:.4f} lr {lr:.2e} {rate:,.0f} samples/s"
        )

    def evaluation(self, *, step: int, epoch: int, epochs: int, values: dict[str, float]) -> None:
        self._record({"type": "eval", "step": step, "epoch": epoch, **values})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
        self.line(f"epoch {epoch}/{epochs} eval: {shown}")

    def summary(self, summary: dict[str, Any]) -> None:
        """The closing line, and ``summary.json``."""
        acc = summary["eval"].get("accuracy")
        ppl = summary["eval"].get("perplexity")
        tail = (
            f", eval perplexity {ppl:.2f}"
            if ppl is not None
            else (f", eval accuracy {acc:.2%}" if acc is not None else "")
        )
        if summary.get("tokens_per_s"):
            tail += f", {summary['tokens_per_s']:,.0f} tokens/s"
            if summary.get("mfu") is not None:
                tail += f", MFU {summary['mfu']:.1%}"
        rate = summary["samples_per_s"]
        self.line(
            f"{summary['status']}: {summary['steps']} steps in {summary['elapsed_s']:.1f}s, "
            f"{rate if rate is not None else 0:,.0f} samples/s{tail}"
        )
        if self.output is not None:
            text = json.dumps(summary, indent=2, default=str) + "\n"
            atomic_write(self.output / "summary.json", lambda fh: fh.write(text.encode()))

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # every record was flushed (or reported) already
                self._file.close()
            self._file = None


class Throughput:
    """Samples and seconds spent training (not evaluating), wall and this process's CPU.

    The first window (start to the first log step) is kept apart as the warm-up: it holds
    torch.compile's compilation, cuDNN's autotuning and the allocator's first growth,
    which can be a minute against seconds of training. ``samples``/``wall_s``/``cpu_s``
    are the steady windows after it; ``rates()`` falls back to the warm-up when there
    is nothing after it (a very short run)."""

    def __init__(self) -> None:
        self.samples = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0  # steadier than wall time on a shared host
        self.warmup_samples = 0
        self.warmup_s = 0.0
        self.warmup_cpu_s = 0.0
        self._laps = 0
        self._window = 0
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        self._window, self._wall, self._cpu = 0, time.perf_counter(), time.process_time()

    def add(self, samples: int) -> None:
        self._window += samples

    def lap(self) -> float:
        """Close the window (adding it to the totals), start the next; its samples/s."""
        wall, cpu = time.perf_counter(), time.process_time()
        rate = self._window / max(wall - self._wall, 1e-9)
        if self._laps == 0:
            self.warmup_samples += self._window
            self.warmup_s += wall - self._wall
            self.warmup_cpu_s += cpu - self._cpu
        else:
            self.samples += self._window
            self.wall_s += wall - self._wall
            self.cpu_s += cpu - self._cpu
        self._laps += 1 if self._window else 0
        self._window, self._wall, self._cpu = 0, wall, cpu
        return rate

    def rates(self) -> tuple[float | None, float | None, float]:
        """(samples per wall second, per CPU second, training seconds), steady state first."""
        samples, wall, cpu = self.samples, self.wall_s, self.cpu_s
        if samples == 0:
            samples, wall, cpu = self.warmup_samples, self.warmup_s, self.warmup_cpu_s
        return (
            samples / wall if wall > 0 else None,
            samples / cpu if cpu > 0 else None,
            self.warmup_s + self.wall_s,
        )


def warn_every_rank(text: str) -> None:
    """``warning: TEXT`` on stderr from whichever rank calls it (a fault of that rank)."""
    print(f"warning: {text}", file=sys.stderr, flush=True)
