"""torchrun integration: rank and world from the environment, one process group.

``torchrun --nproc-per-node N -m aibuild train`` sets RANK, WORLD_SIZE and
LOCAL_RANK. NCCL on CUDA, gloo on CPU. Only rank 0 logs and writes files.

The group's C++ object must die while the interpreter is alive. gloo's worker threads
hold each collective's tensors until they drop the finished work. A tensor that Python
dropped first is then released by the worker, which takes the GIL to do it. During
interpreter finalization that GIL take ends the thread (``pthread_exit``) inside a
``noexcept`` destructor: ``terminate called without an active exception``, SIGABRT.
This is the rare abort at the end of a 2-node run. ``destroy_process_group`` alone did
not free the group: ``torch.distributed.nn.functional`` binds ``group.WORLD`` as a
default argument when it is first imported, and DDP imports it (through
``torch._dynamo``) after ``init_process_group``. So the group lived until the
interpreter tore the module down. :func:`init_distributed` imports that module first,
the trainer drops DDP before :func:`cleanup`, and :func:`cleanup` checks that the
group is gone.
"""

from __future__ import annotations

import gc
import importlib
import os
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from aibuild.errors import TrainError
from aibuild.train.device import DeviceWait


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=local)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise TrainError("this torch build has no NCCL: cannot train on several GPUs")
    if device_type == "cuda":
        torch.cuda.set_device(local)
    # Before the group exists, so its default arguments bind None, not the group (above).
    importlib.import_module("torch.distributed.nn")

    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (identity when not distributed)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    DeviceWait(device)()  # wait for the slowest rank blocked, not spinning a core
    return [float(v) for v in t.tolist()]


def any_rank(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True when ``flag`` is true on any rank, so all ranks stop at the same step."""
    if not info.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], device, info)[0] > 0


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> bool:
    """Destroy the process group; True when its C++ object (gloo's threads) is gone.

    Call it after every reference the caller holds is dropped (the DDP wrapper). False
    means something still holds the group: it would then be destroyed during interpreter
    finalization, where gloo can abort (see the module's docstring).
    """
    global _destroyed
    if not (info.enabled and dist.is_initialized()):
        return True
    _destroyed = group = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    if group() is not None:
        gc.collect()  # a reference cycle may hold it
    return group() is None


_destroyed: weakref.ref[Any] | None = None  # the group cleanup() destroyed last


def group_lingers() -> bool:
    """True when a group destroyed by :func:`cleanup` is still referenced (the torchrun
    worker then ends with ``os._exit`` rather than finalize it: see ``aibuild train``)."""
    return _destroyed is not None and _destroyed() is not None
