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
