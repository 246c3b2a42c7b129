"""The machine a run trains on: device and precision choice, determinism, versions.

Small functions the loop, the summary and ``--selftest`` share.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Iterator
from typing import Any

import torch

from aibuild import __version__
from aibuild.errors import TrainError
from aibuild.train.config import TrainConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SMALL_MODEL = 1_000_000  # parameters: below this, cpu_threads auto on CPU means one thread
# On CUDA the host only gathers and pins batches (one copy of each batch): one thread per
# this many values of a batch (32 MiB as float32, about 5 ms of copying) is enough.
GATHER_VALUES_PER_THREAD = 1 << 23


def pick_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(
                f"--device {name}: no usable CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'})"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices")
        return device
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` = bf16 on CUDA when supported, else fp32; refuses what the device cannot do."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise TrainError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError(
            f"precision bf16 is not supported on {device_name(device)}; use fp16 or fp32"
        )
    return precision


@contextlib.contextmanager
def determinism(cfg: TrainConfig) -> Iterator[None]:
    """Seeds, CPU threads and (optionally) deterministic algorithms; restores the global
    flags afterwards."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_bench = torch.backends.cudnn.benchmark
    was_threads = torch.get_num_threads()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        if torch.are_deterministic_algorithms_enabled() != was_det:
            torch.use_deterministic_algorithms(was_det)  # imports torch._inductor: ~1 s
        torch.backends.cudnn.benchmark = was_bench
        torch.set_num_threads(was_threads)


def auto_cpu_threads(
    device_type: str, n_params: int, batch_values: int, available: int
) -> int | None:
    """The intra-op thread count for ``cpu_threads: 0`` (auto), or None for torch's default.

    - CPU, a model under :data:`SMALL_MODEL` parameters: 1. Tiny ops gain little from a
      second thread, and OpenMP threads spinning against other load on a shared host
      cost up to 10x (measured on 2 cores).
    - CUDA: the host's part of a step is the batch gather and the copy into pinned memory;
      the pool is sized to that copy (one thread per :data:`GATHER_VALUES_PER_THREAD` values
      of a batch, at most ``available``), so 1 for most batches. A bigger pool burns cores
      while the GPU computes: after each parallel region an idle OpenMP thread spin-waits
      for the next one (libgomp's default wait policy), and with a gather every step that
      is every thread of the pool spinning all the time (benchmarks/bench_train.py
      --phases shows it on CPU with a sleep standing in for the GPU).
    """
    if device_type == "cuda":
        wanted = -(-max(batch_values, 1) // GATHER_VALUES_PER_THREAD)
        return max(1, min(wanted, available))
    if device_type == "cpu" and n_params < SMALL_MODEL:
        return 1
    return None


class DeviceWait:
    """Waits for the work queued on the current CUDA stream by blocking the thread, not by
    spinning on a core: a ``blocking`` CUDA event (``cudaEventBlockingSync``). A plain
    sync (``.item()``, ``float(t)``) spins under the CUDA default scheduling whenever the
    process has fewer CUDA contexts than the host has cores. A no-op off CUDA."""

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.event = torch.cuda.Event(blocking=True) if cuda else None  # type: ignore[no-untyped-call]

    def __call__(self) -> None:
        if self.event is not None:
            self.event.record()
            self.event.synchronize()


def versions() -> dict[str, Any]:
    return {
        "aibuild": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        if torch.backends.cudnn.is_available()  # type: ignore[no-untyped-call]
        else None,
    }


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, in TFLOP/s,
# matched against torch.cuda.get_device_name(): the denominator of the MFU the trainer
# reports. SXM parts; a PCIe or NVL variant runs lower, so its MFU reads low.
PEAK_TENSOR_TFLOPS = (
    ("B200", 2250.0),  # NVIDIA DGX B200 datasheet: 72 PFLOPS FP8 dense / 8 GPUs, bf16 half
    ("H200", 989.4),  # H200 datasheet: BF16 1,979 TFLOPS with sparsity
    ("H100", 989.4),  # H100 SXM datasheet: BF16 1,979 TFLOPS with sparsity
    ("A100", 312.0),  # A100 datasheet: BF16 312 TFLOPS (624 with sparsity)
    ("L4", 121.0),  # L4 datasheet: BF16 242 TFLOPS with sparsity
)


def peak_tensor_tflops(device: torch.device, precision: str) -> float | None:
    """The GPU's dense bf16/fp16 peak when this trainer knows it (None otherwise, and for
    fp32 or the CPU, where there is no such single figure)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = str(torch.cuda.get_device_name(device))
    return next((peak for key, peak in PEAK_TENSOR_TFLOPS if key in name), None)
