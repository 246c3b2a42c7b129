"""``aibuild train --selftest``: what this torch sees, and how fast it is, in a few seconds.

Reports torch/CUDA/cuDNN versions, each GPU (name, compute capability, memory),
bf16 support, NCCL/gloo availability, and measures matmul TFLOP/s and memory
bandwidth on CPU and on each working GPU. ``problems`` lists what makes the
host unfit for the profile: a profile with ``hardware.accelerator: nvidia``
needs at least one GPU that really runs a kernel.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from aibuild.train.device import versions


def _timeit(fn: Callable[[], Any], sync: Callable[[], None], budget_s: float) -> float:
    """Seconds per call of ``fn``, repeated for about ``budget_s`` after one warm-up."""
    fn()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s or calls >= 1000:
            return elapsed / calls


def measure(device: torch.device, budget_s: float = 0.5) -> dict[str, float]:
    """Matmul TFLOP/s (fp32, and bf16 on GPUs) and copy bandwidth in GB/s."""
    is_cuda = device.type == "cuda"

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    out: dict[str, float] = {}
    n = 4096 if is_cuda else 512
    dtypes = [("fp32", torch.float32)]
    if is_cuda and torch.cuda.is_bf16_supported():
        dtypes.append(("bf16", torch.bfloat16))
    for label, dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        secs = _timeit(functools.partial(torch.mm, a, b), sync, budget_s)
        out[f"matmul_{label}_tflops"] = round(2 * n**3 / secs / 1e12, 3)
    size = (256 if is_cuda else 32) * 2**20
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    secs = _timeit(lambda: dst.copy_(src), sync, budget_s)
    out["copy_bandwidth_gb_s"] = round(2 * size / secs / 1e9, 2)  # read + write
    return out


def run_selftest(expect_gpu: bool, budget_s: float = 0.5) -> dict[str, Any]:
    """The report as a dict; ``problems`` is empty when the host fits the profile."""
    report: dict[str, Any] = {
        "versions": versions(),
        "cuda_available": torch.cuda.is_available(),
        "nccl_available": bool(dist.is_available() and dist.is_nccl_available()),
        "gloo_available": bool(dist.is_available() and dist.is_gloo_available()),
        "devices": [],
        "problems": [],
    }
    report["cpu"] = {"threads": torch.get_num_threads(), **measure(torch.device("cpu"), budget_s)}
    working_gpus = 0
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            dev = torch.device("cuda", index)
            info: dict[str, Any] = {"index": index}
            try:
                props = torch.cuda.get_device_properties(index)
                info.update(
                    name=props.name,
                    compute_capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    bf16=bool(torch.cuda.is_bf16_supported()),
                )
                probe = (torch.ones(4, device=dev) * 2).sum().item()
                if probe != 8.0:
                    raise RuntimeError(f"a test kernel computed {probe}, expected 8.0")
                info.update(measure(dev, budget_s))
                info["works"] = True
                working_gpus += 1
            except Exception as exc:  # a broken driver/runtime shows up here, not at import
                info["works"] = False
                info["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            report["devices"].append(info)
    if expect_gpu and working_gpus == 0:
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA"
                if torch.version.cuda is None
                else "CUDA is not available (no GPU visible to the container, or driver too old)"
            )
        else:
            why = "no GPU could run a kernel"
        report["problems"].append(
            f"the profile expects an NVIDIA GPU (hardware.accelerator: nvidia) but {why}"
        )
    if expect_gpu and working_gpus > 1 and not report["nccl_available"]:
        report["problems"].append("several GPUs but no NCCL in this torch build")
    return report


def format_report(report: dict[str, Any]) -> str:
    v = report["versions"]
    lines = [
        f"aibuild {v['aibuild']}, python {v['python']}, torch {v['torch']}, "
        f"CUDA {v['cuda'] or 'none (CPU build)'}, cuDNN {v['cudnn'] or 'none'}",
        f"distributed: NCCL {'yes' if report['nccl_available'] else 'no'}, "
        f"gloo {'yes' if report['gloo_available'] else 'no'}",
        f"cpu: {report['cpu']['threads']} threads, matmul fp32 "
        f"{report['cpu']['matmul_fp32_tflops']:.3f} TFLOP/s, copy "
        f"{report['cpu']['copy_bandwidth_gb_s']:.1f} GB/s",
    ]
    if not report["devices"]:
        lines.append("gpus: none")
    for d in report["devices"]:
        head = f"gpu {d['index']}: {d.get('name', '?')}"
        if "compute_capability" in d:
            head += f", compute capability {d['compute_capability']}, {d['memory_gib']} GiB, "
            head += f"bf16 {'yes' if d.get('bf16') else 'no'}"
        if d.get("works"):
            tf = f"matmul fp32 {d['matmul_fp32_tflops']:.1f}"
            if "matmul_bf16_tflops" in d:
                tf += f" / bf16 {d['matmul_bf16_tflops']:.1f}"
            head += f"; {tf} TFLOP/s, copy {d['copy_bandwidth_gb_s']:.0f} GB/s"
        else:
            head += f"; NOT WORKING: {d.get('error', 'unknown error')}"
        lines.append(head)
    if report["problems"]:
        lines.extend(f"problem: {p}" for p in report["problems"])
    else:
        lines.append("selftest ok")
    return "\n".join(lines)
