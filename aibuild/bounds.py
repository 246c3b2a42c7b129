"""Every limit on a number that becomes resources (nodes, processes, memory, time) or on
input aibuild reads, in one table that the code and docs/security.md both read.

A value outside its bound is refused with one line before anything is allocated,
written or started: ``run --nodes 1000000000`` must not build a billion container
configs first, and ``--mem 1e20t`` must not reach a scheduler.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from aibuild.errors import AibuildError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
DAY = 86400


@dataclass(frozen=True)
class Bound:
    """``low <= value <= high``, in ``unit``; ``options`` are the places that read it."""

    low: int
    high: int
    unit: str
    options: str

    def shown(self, value: int) -> str:
        return _human(value, self.unit)


def _human(value: int, unit: str) -> str:
    if unit == "bytes":
        for suffix, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
            if value >= size and value % size == 0:
                return f"{value // size} {suffix}"
        return f"{value} bytes"
    if unit == "seconds" and value >= DAY and value % DAY == 0:
        return f"{value // DAY} days"
    return f"{value:,}" + (f" {unit}" if unit else "")


BOUNDS: dict[str, Bound] = {
    "run_nodes": Bound(1, 64, "", "run --nodes (containers on one host)"),
    "job_nodes": Bound(1, 4096, "", "export slurm/k8s --nodes, submit slurm --nodes"),
    "nproc_per_node": Bound(1, 256, "", "--nproc-per-node"),
    "cpus_per_node": Bound(1, 4096, "", "export --cpus"),
    "memory_per_node": Bound(MIB, 64 * TIB, "bytes", "export --mem"),
    "time_limit": Bound(1, 365 * DAY, "seconds", "export --time"),
    "rdzv_port": Bound(1024, 65535, "", "--rdzv-port"),
    "diff_files": Bound(0, 1_000_000, "", "diff --max-files"),
    "project_file_bytes": Bound(0, MIB, "bytes", "project.requirements, pyproject.toml"),
    "dockerignore_bytes": Bound(0, MIB, "bytes", ".dockerignore"),
    "dockerignore_patterns": Bound(0, 10_000, "", ".dockerignore patterns"),
    "toml_depth": Bound(0, 64, "", "pyproject.toml nesting"),
}


class BoundsError(AibuildError):
    """A number outside its bound (exit code 1)."""


def check(name: str, value: int, option: str, error: type[AibuildError] = BoundsError) -> int:
    """``value`` if it is within ``BOUNDS[name]``; else ``error`` with one line."""
    bound = BOUNDS[name]
    if not bound.low <= value <= bound.high:
        digits = str(value)
        shown = f"{value:,}" if len(digits) < 30 else digits[:12] + "...(a huge number)"
        raise error(
            f"{option} {shown} is out of bounds: between {bound.shown(bound.low)} and "
            f"{bound.shown(bound.high)}"
        )
    return value


def read_bounded(path: Path, limit: int, what: str, error: type[AibuildError]) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; ``error`` (one line) for a
    larger file, a FIFO, a device, a folder or a link to one. Bounded by the bytes read,
    not by ``stat``: a file that grows while read, or /proc's size-0 files, stay bounded."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{what} {path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise error(f"{what} {path} is larger than {_human(limit, 'bytes')}")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def markdown_table() -> str:
    """The table as docs/security.md shows it (a unit test keeps the two equal)."""
    rows = ["| bound | lowest | highest | where |", "| --- | --- | --- | --- |"]
    for name, bound in BOUNDS.items():
        rows.append(
            f"| `{name}` | {bound.shown(bound.low)} | {bound.shown(bound.high)} | {bound.options} |"
        )
    return "\n".join(rows) + "\n"


__all__ = ["BOUNDS", "Bound", "BoundsError", "check", "markdown_table", "read_bounded"]
