"""Writing a file a user named (``export -f``, ``lock -o``): the one way aibuild does it.

- a file that exists is replaced only when aibuild wrote it (``ours`` reads its first
  bytes: the ``Written by aibuild`` header of a job, the ``aibuild_lock`` key of a lock),
  and never when it is an input of the same command (the profile it was made from);
- a symbolic link, a device, a FIFO or a folder at the path is refused, never followed;
- the text goes to a temporary file beside it, then takes its place (``os.replace``):
  a reader sees the old file or the new one, never half of one;
- every failure (a missing folder, a full disk, ``/proc``) is one line, exit 1.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from aibuild.errors import AibuildError

HEAD_BYTES = 4096  # what ``ours`` sees of a file that exists


class OutputFileError(AibuildError):
    """The file named by -f/-o cannot or may not be written (exit code 1)."""


def _head(path: Path) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        return os.read(fd, HEAD_BYTES)
    finally:
        os.close(fd)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_target(
    path: Path,
    *,
    option: str,
    ours: Callable[[bytes], bool],
    inputs: Iterable[Path | str | None] = (),
) -> None:
    """Refuse (OutputFileError) a path that may not be written: before any work is done."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputFileError(f"{option} {path}: the folder {folder} does not exist")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputFileError(f"{option} {path}: {_why(exc)}") from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputFileError(
            f"{option} {path} is a symbolic link: aibuild does not write through links; "
            "name the file itself"
        )
    if not stat.S_ISREG(info.st_mode):
        raise OutputFileError(f"{option} {path} exists and is not a regular file")
    for given in inputs:
        if given is None:
            continue
        with contextlib.suppress(OSError):
            if os.path.samefile(path, given):
                raise OutputFileError(
                    f"{option} {path} is an input of this command ({given}): it would be "
                    "replaced by its own output"
                )
    try:
        head = _head(path)
    except OSError as exc:
        raise OutputFileError(f"{option} {path}: {_why(exc)}") from None
    if not ours(head):
        raise OutputFileError(
            f"{option} {path} exists and aibuild did not write it: move it away or name "
            "another file (aibuild replaces only files it wrote)"
        )


def write_text(
    path: Path,
    text: str,
    *,
    option: str,
    ours: Callable[[bytes], bool],
    inputs: Iterable[Path | str | None] = (),
) -> Path:
    """``text`` to ``path``, checked (``check_target``) and atomic."""
    check_target(path, option=option, ours=ours, inputs=inputs)
    folder = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputFileError(f"{option} {path}: cannot write it: {_why(exc)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def header_mark(mark: bytes) -> Callable[[bytes], bool]:
    """``ours`` for files whose first bytes hold ``mark``."""
    return lambda head: mark in head


__all__ = ["OutputFileError", "check_target", "header_mark", "write_text"]
