"""Checkpoints: what a run saves and restores, written atomically, the newest K kept.

:class:`Checkpointer` owns the state a checkpoint holds: the model, optimizer,
scaler, RNG states, the position (step, epoch, batch within the epoch; the LR
is a pure function of the step) and the config. A checkpoint is one
``torch.save`` file, ``ckpt-<step>.pt`` in ``<output>/checkpoints/``, written to
a temporary file in the same directory, fsynced, renamed over the final name
and the directory fsynced, so a crash leaves either the old set or the new
file, never half a file; a write that fails (a full disk) removes its
temporary file and says which checkpoint is still the newest intact one.

Before training, :func:`prepare_output` checks that the output and checkpoint
directories can be written and removes temporary files a killed run left.
``--resume auto`` takes the newest checkpoint that loads and is well formed,
warning about each newer one it skips and why.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from aibuild.errors import TrainError
from aibuild.train.config import TrainConfig, shown
from aibuild.train.distributed import DistInfo, barrier

FORMAT = "aibuild-train-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
# what atomic_write leaves when killed: ".<name>.<random>.tmp" next to <name>
_TEMP = re.compile(r"^\.(ckpt-\d+\.pt|model\.pt|summary\.json|aibuild-probe)\..*\.tmp$")


def checkpoint_dir(output: Path) -> Path:
    return output / "checkpoints"


# ---------------------------------------------------------------------------- files


class _Recorder:
    """A file wrapper that keeps the OSError a write raised: torch.save reports it as an
    opaque RuntimeError."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    """Call ``write(file)`` on a temporary file, fsync it, rename it to ``path``, fsync the
    directory. A failed write (OSError) removes the temporary file and raises TrainError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TrainError(f"cannot write {path}: {exc.strerror or exc}") from None
    recorder: _Recorder | None = None
    try:
        with os.fdopen(fd, "wb") as fh:
            recorder = _Recorder(fh)
            write(recorder)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = exc if isinstance(exc, OSError) else (recorder.error if recorder else None)
        if error is not None:
            raise TrainError(f"cannot write {path}: {error.strerror or error}") from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def prepare_output(output: Path) -> None:
    """Make the output and checkpoint directories, prove both writable, and remove the
    temporary files of a killed save: before any training, not after an epoch of it."""
    for directory in (output, checkpoint_dir(output)):
        if directory.exists() and not directory.is_dir():
            raise TrainError(f"cannot write to {directory}: it is a file, not a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".aibuild-probe.", suffix=".tmp", dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise TrainError(
                f"cannot write to {directory}: {exc.strerror or exc} (choose another --output)"
            ) from None
        for stale in directory.iterdir():
            if _TEMP.match(stale.name) and stale.is_file():
                stale.unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (by step)."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _NAME.match(p.name)) and p.is_file()
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep: int) -> Path:
    """Write ``ckpt-<step>.pt`` and delete all but the newest ``keep``."""
    path = directory / f"ckpt-{step:08d}.pt"
    try:
        atomic_save(state, path)
    except TrainError as exc:
        intact = [p for p in list_checkpoints(directory) if p != path]
        kept = f"; the previous checkpoint {intact[-1]} is intact" if intact else "; none was saved"
        raise TrainError(f"checkpoint not saved: {exc}{kept}") from None
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------- reading


class CorruptCheckpoint(TrainError):
    """A checkpoint file that cannot be loaded or is not well formed."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"checkpoint {path} is unusable: {reason}")


def resume_candidates(resume: str | None, directory: Path) -> list[Path]:
    """The checkpoints to try, best first: ``auto`` = every one in ``directory``, newest
    first (none: []); a directory = its newest; a file = itself."""
    if not resume:
        return []
    if resume == "auto":
        return list_checkpoints(directory)[::-1]
    path = Path(resume)
    if path.is_dir():
        found = list_checkpoints(path) or list_checkpoints(checkpoint_dir(path))
        if not found:
            raise TrainError(f"--resume {resume}: no ckpt-*.pt checkpoint in that directory")
        return found[-1:]
    if not path.is_file():
        raise TrainError(f"--resume {resume}: no such checkpoint file")
    return [path]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return shown(f"{name}: {text}" if text else name, quote=False)


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, Mapping):
        raise ValueError(f"rng is {shown(rng)}, not a mapping")
    if "torch" in rng:
        if not isinstance(rng["torch"], torch.Tensor):
            raise ValueError("rng.torch is not a tensor")
        torch.Generator().set_state(rng["torch"])  # raises on a malformed state
    if "python" in rng:
        py = rng["python"]
        if not isinstance(py, (list, tuple)) or len(py) != 3:
            raise ValueError("rng.python is not a Python RNG state")
        random.Random().setstate((py[0], tuple(py[1]), py[2]))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, checked for form: CorruptCheckpoint when it does not load or
    an entry is missing or of the wrong kind."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:  # a bound that failed must show, not pass as bad input
        raise
    except Exception as exc:
        raise CorruptCheckpoint(path, _reason(exc)) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CorruptCheckpoint(path, "not an aibuild checkpoint")
    model = state["model"]
    if not isinstance(model, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in model.values()
    ):
        raise CorruptCheckpoint(path, "its model entry is not a mapping of tensors")
    for key in ("optimizer", "scaler"):
        if state.get(key) is not None and not isinstance(state[key], Mapping):
            raise CorruptCheckpoint(path, f"its {key} entry is not a mapping")
    for key in ("step", "epoch", "batch_in_epoch"):
        value = state.get(key, 0)
        if type(value) is not int or value < 0:
            raise CorruptCheckpoint(path, f"{key} is {shown(value)}, not a count")
    try:
        _check_rng(state.get("rng", {}))
    except MemoryError:  # a bound that failed must show, not pass as bad input
        raise
    except Exception as exc:
        raise CorruptCheckpoint(path, f"malformed RNG state ({_reason(exc)})") from None
    return state


# ---------------------------------------------------------------------------- the checkpointer


@dataclass
class Position:
    """Where a run is: optimizer steps taken, epochs completed, batches into this epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class Checkpointer:
    """Owns what a checkpoint saves and restores; rank 0 writes, every rank restores."""

    def __init__(
        self,
        output: Path,
        cfg: TrainConfig,
        info: DistInfo,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        extra: dict[str, Any],
        write: bool,
    ) -> None:
        self.output = output
        self.directory = checkpoint_dir(output)
        self.cfg, self.info, self.device = cfg, info, device
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.extra = extra  # dataset facts saved alongside (name, classes, vocab)
        self.write = write and info.is_main
        self.last_saved_step = -1

    def state_dict(self, pos: Position) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": {"step": pos.step},  # the LR is a pure function of the step
            "step": pos.step,
            "epoch": pos.epoch,
            "batch_in_epoch": pos.batch_in_epoch,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
            "config": self.cfg.to_dict(),
            **self.extra,
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, pos: Position) -> Path | None:
        """Rank 0 writes a checkpoint at ``pos``; all ranks then meet."""
        path = None
        if self.write:
            path = save_checkpoint(
                self.state_dict(pos), self.directory, pos.step, self.cfg.keep_checkpoints
            )
        self.last_saved_step = pos.step
        barrier(self.info)
        return path

    def newest(self) -> Path | None:
        found = list_checkpoints(self.directory)
        return found[-1] if found else None

    def save_model(self) -> None:
        """The final weights alone, ``model.pt`` (rank 0)."""
        if self.write:
            atomic_save(self.model.state_dict(), self.output / "model.pt")

    def resume(
        self, resume: str | None, warn: Callable[[str], None]
    ) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume from and its state, or None. With ``auto``, a
        checkpoint that does not load is skipped (with a warning) for the next older one."""
        candidates = resume_candidates(resume, self.directory)
        for path in candidates:
            try:
                return path, load_checkpoint(path)
            except CorruptCheckpoint as exc:
                if resume != "auto":
                    raise
                warn(f"skipping checkpoint {path}: {exc.reason}")
        if candidates:
            raise TrainError(
                f"--resume auto: none of the {len(candidates)} checkpoints in {self.directory} "
                "can be loaded (see the warnings); move them away to start afresh"
            )
        return None

    def restore(
        self, state: dict[str, Any], path: Path, *, epochs: int, batches_per_epoch: int
    ) -> Position:
        """Load ``state`` into the model, optimizer, scaler and RNGs; its position, checked
        against this run's data and config."""
        pos = Position(
            int(state["step"]), int(state.get("epoch", 0)), int(state.get("batch_in_epoch", 0))
        )
        if pos.epoch > epochs:
            raise TrainError(
                f"checkpoint {path} is at epoch {pos.epoch}, past this run's {epochs} epochs: "
                "raise --epochs to continue it"
            )
        if pos.batch_in_epoch > batches_per_epoch:
            raise TrainError(
                f"checkpoint {path} is at batch {pos.batch_in_epoch} of an epoch, but an epoch "
                f"of this data has {batches_per_epoch} batches: resume with the data and "
                "batch size it was trained with"
            )
        saved = state.get("config")
        theirs = saved.get("optimizer") if isinstance(saved, Mapping) else None
        if theirs is not None and theirs != self.cfg.optimizer:
            raise TrainError(
                f"checkpoint {path} holds {shown(theirs)} optimizer state, but this run uses "
                f"{self.cfg.optimizer!r}: resume with --optimizer {shown(theirs, quote=False)}, "
                "or start afresh in another --output"
            )
        try:
            self.model.load_state_dict(state["model"])
            if state.get("optimizer") is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except MemoryError:  # a bound that failed must show, not pass as bad input
            raise
        except Exception as exc:
            raise TrainError(
                f"checkpoint {path} does not fit this model/config ({_reason(exc)}); "
                "use another --output or drop --resume"
            ) from None
        self.last_saved_step = pos.step
        self._restore_rng(state.get("rng", {}), pos.step)
        return pos

    def _restore_rng(self, rng: Mapping[str, Any], step: int) -> None:
        if self.info.enabled:
            # ranks must not share dropout masks: a fresh, rank-specific stream
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.info.rank + step)
            return
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            py = rng["python"]
            random.setstate((py[0], tuple(py[1]), py[2]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
