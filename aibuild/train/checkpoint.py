"""Checkpoints: written atomically, the newest K kept, ``--resume auto`` finds the newest.

A checkpoint is one ``torch.save`` file, ``ckpt-<step>.pt`` in
``<output>/checkpoints/``, holding the model, optimizer, scaler, scheduler
position (the step: the LR is a pure function of it), epoch and position within
it, RNG states and the config. It is written to a temporary file in the same
directory, fsynced, renamed over the final name and the directory fsynced, so a
crash leaves either the old set or the new file, never half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from aibuild.errors import TrainError

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_dir(output: Path) -> Path:
    return output / "checkpoints"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (by step)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep: int) -> Path:
    """Write ``ckpt-<step>.pt`` and delete all but the newest ``keep``."""
    path = directory / f"ckpt-{step:08d}.pt"
    atomic_save(state, path)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def find_resume(resume: str | None, directory: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the newest (None if none), else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir():
        found = list_checkpoints(path) or list_checkpoints(checkpoint_dir(path))
        if not found:
            raise TrainError(f"--resume {resume}: no ckpt-*.pt checkpoint in that directory")
        return found[-1]
    if not path.is_file():
        raise TrainError(f"--resume {resume}: no such checkpoint file")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"cannot load checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise TrainError(f"{path} is not an aibuild checkpoint")
    return state
