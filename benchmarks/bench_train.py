"""Trainer throughput vs a plain PyTorch tutorial loop: same model, batch size and data.

    python benchmarks/bench_train.py [--workload cnn|mlp|all] [--repeats 3] [--device cpu]

The plain loop is pytorch/examples' mnist ``train()`` (a DataLoader over a
TensorDataset with shuffle, zero_grad/forward/loss/backward/step, ``loss.item()``
every 10 batches) driving the same model on the same tensors with the same AdamW.
Two workloads: the tutorial's CNN on MNIST-shaped 1x28x28 inputs, and the MLP on
the embedded digits' 1x8x8 (small enough that per-batch overhead shows). The
trainer runs ``aibuild train``'s loop (``run_training``) with ``dataset:
synthetic`` on those tensors, evaluation off. Both are timed over their training
loop only (no model build, no checkpoint write), after the same warm-up: the first
``log_every`` (10) batches, where compilation, cuDNN autotuning and the allocator's
first growth happen. Runs are interleaved and the
best of ``--repeats`` is kept for each, so other load on the machine hurts every
variant alike.

Printed: samples/s of each variant, and each as a ratio to the plain loop at
batch 64. The trainer at equal settings should be >= 1.0; its recommended
settings (batch 256, channels_last for the CNN, and torch.compile where it
helps) should be faster still. Beside it, the CPU cost: CPU-microseconds per
sample (``resource.getrusage`` of this process and its children, every thread,
over the same steady-state window), and the trainer's as a ratio to the plain
loop's (lower is cheaper; the goal on a GPU is at most 1.5x).

Threads: on CPU both loops compute with the same intra-op threads
(``--threads``, else torch's default). On CUDA the trainer runs as ``aibuild
train`` does, ``cpu_threads`` auto, which sizes the host's thread pool to its
work (the batch gather); the plain loop keeps torch's default.

``--phases`` also measures, on this machine, where the trainer's CPU goes: the
thread count and the CPU and wall time of each phase of a step (batch gather,
forward and backward, optimizer step), and the cost of idle OpenMP threads:
a batch gather followed by a 2 ms sleep standing in for the GPU's work, with
torch's default pool and with the pool ``cpu_threads`` auto picks on CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aibuild.train.config import TrainConfig
from aibuild.train.data import load_synthetic
from aibuild.train.device import auto_cpu_threads, determinism
from aibuild.train.distributed import DistInfo
from aibuild.train.loop import Trainer, TrainOptions, run_training
from aibuild.train.models import build_model


def cpu_seconds() -> float:
    """CPU time of this process (every thread) and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def os_threads() -> int:
    """Threads of this process now (OpenMP's pool included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        return 0


def base_config(model: str, shape: list[int], samples: int, device: str) -> TrainConfig:
    return TrainConfig(
        model=model,
        dataset="synthetic",
        synthetic_shape=shape,
        synthetic_samples=samples,
        batch_size=64,
        epochs=1,
        eval=False,
        log_every=10,
        device=device,
        precision="fp32",
        keep_checkpoints=1,
        # CPU: the plain loop's thread count (equal settings for the arithmetic); CUDA: auto,
        # what `aibuild train` does (the pool sized to the host's work)
        cpu_threads=torch.get_num_threads() if device == "cpu" else 0,
    )


def plain_loop(cfg: TrainConfig) -> tuple[float, float]:
    """(samples per wall second, CPU-seconds per sample) of the tutorial loop."""
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    data = load_synthetic(cfg)
    x, y = data.train.__getitems__(list(range(len(data.train))))
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True)
    model = build_model(cfg, data).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    seen = 0
    for batch_idx, (inputs, target) in enumerate(loader):
        if batch_idx == cfg.log_every:  # the trainer's rule: the first log window is warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu_start, seen = time.perf_counter(), cpu_seconds(), 0
        inputs, target = inputs.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(inputs)
        loss = F.cross_entropy(output, target)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        seen += len(inputs)
        if batch_idx % 10 == 0:
            loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start), (cpu_seconds() - cpu_start) / seen


def trainer(cfg: TrainConfig) -> tuple[float, float]:
    """(samples per wall second, CPU-seconds per sample) of aibuild's loop, from its summary
    (the process's CPU over its steady windows) and the CPU of any children it waited for
    during the run (DataLoader workers; counted against the steady samples alone, which
    can only overstate the trainer's cost)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    kids_before = kids.ru_utime + kids.ru_stime
    with tempfile.TemporaryDirectory() as tmp:
        opts = TrainOptions(output=Path(tmp), handle_signals=False, stream=open("/dev/null", "w"))  # noqa: SIM115
        try:
            summary = run_training(cfg, opts)
        finally:
            assert opts.stream is not None
            opts.stream.close()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    per_s = float(summary["samples_per_s"])
    steady = per_s * (float(summary["train_time_s"]) - float(summary["warmup_s"]))
    kids_cpu = kids.ru_utime + kids.ru_stime - kids_before
    return per_s, 1.0 / float(summary["samples_per_cpu_s"]) + kids_cpu / max(steady, 1.0)


WORKLOADS = {
    # name: (model, sample shape, samples per run)
    "cnn": ("cnn", [1, 28, 28], 2048),  # the MNIST tutorial's net and input
    "mlp": ("mlp", [1, 8, 8], 16384),  # the embedded digits' size: loop overhead shows
}


def run_workload(name: str, args: argparse.Namespace) -> dict[str, float]:
    model, shape, samples = WORKLOADS[name]
    cfg = base_config(model, shape, args.samples or samples, args.device)
    conv = model == "cnn"
    variants: dict[str, tuple[str, TrainConfig]] = {
        "plain loop, batch 64": ("plain", cfg),
        "trainer, batch 64 (equal settings)": ("trainer", cfg),
        "plain loop, batch 256": ("plain", replace(cfg, batch_size=256)),
        "trainer, batch 256" + (", channels_last" if conv else "") + " (recommended)": (
            "trainer",
            replace(cfg, batch_size=256, channels_last=conv),
        ),
    }
    if args.compile:
        variants["trainer, batch 256, compile"] = (
            "trainer",
            replace(cfg, batch_size=256, channels_last=conv, compile=True),
        )
    wall: dict[str, float] = dict.fromkeys(variants, 0.0)
    cpu: dict[str, float] = dict.fromkeys(variants, math.inf)  # CPU-seconds per sample
    print(
        f"\n== {model} on {'x'.join(map(str, shape))}, {cfg.synthetic_samples} samples a run, "
        f"best of {args.repeats} interleaved runs",
        flush=True,
    )
    for r in range(args.repeats):
        for vname, (kind, vcfg) in variants.items():
            w, c = plain_loop(vcfg) if kind == "plain" else trainer(vcfg)
            wall[vname], cpu[vname] = max(wall[vname], w), min(cpu[vname], c)
            print(
                f"  run {r + 1}: {vname:<50} {w:10.1f} samples/s {c * 1e6:10.1f} cpu-us/sample",
                flush=True,
            )
    print(f"{'variant':<52}{'samples/s':>11}{'ratio':>8}{'cpu-us/sample':>15}{'ratio':>8}")
    ref_w, ref_c = wall["plain loop, batch 64"], cpu["plain loop, batch 64"]
    for vname in variants:
        print(
            f"{vname:<52}{wall[vname]:11.1f}{wall[vname] / ref_w:7.2f}x"
            f"{cpu[vname] * 1e6:15.1f}{cpu[vname] / ref_c:7.2f}x"
        )
    eq = "trainer, batch 64 (equal settings)"
    rec = next(k for k in variants if k.endswith("(recommended)"))
    out = {
        "equal_wall_ratio": wall[eq] / ref_w,
        # CPU-seconds per sample, the trainer's over the plain loop's: lower is cheaper
        "equal_cpu_per_sample_ratio": cpu[eq] / ref_c,
        "recommended_wall_ratio": wall[rec] / ref_w,
        "recommended_cpu_per_sample_ratio": cpu[rec] / ref_c,
        "recommended_vs_plain_same_batch_cpu": cpu[rec] / cpu["plain loop, batch 256"],
    }
    print(
        f"trainer at equal settings: {out['equal_wall_ratio']:.2f}x the plain loop's "
        f"samples/s, {out['equal_cpu_per_sample_ratio']:.2f}x its CPU-seconds per sample "
        f"({cpu[eq] * 1e6:.1f} vs {ref_c * 1e6:.1f} us)"
    )
    print(
        f"trainer at recommended settings: {out['recommended_wall_ratio']:.2f}x the plain loop "
        f"at batch 64, {out['recommended_cpu_per_sample_ratio']:.2f}x its CPU per sample "
        f"({out['recommended_vs_plain_same_batch_cpu']:.2f}x the plain loop's at batch 256)"
    )
    if wall[rec] < wall[eq]:
        print(
            "  (slower here: this workload is bound by arithmetic that this device does not "
            "speed up with bigger batches or channels_last; keep batch 64 on it)"
        )
    return {
        **{f"wall:{k}": v for k, v in wall.items()},
        **{f"cpu:{k}": v for k, v in cpu.items()},
        **out,
    }


def phases(args: argparse.Namespace, steps: int = 120) -> dict[str, float]:
    """Where the trainer's CPU goes, on this machine: thread count, and CPU/wall per phase."""
    model, shape, samples = WORKLOADS["cnn"]
    default_threads = torch.get_num_threads()
    out: dict[str, float] = {}
    print(f"\n== phases of a trainer step (cnn, batch 64, cpu), {steps} steps after warm-up")
    print(f"{'pool':<34}{'phase':<22}{'cpu-ms/step':>12}{'wall-ms/step':>13}{'threads':>9}")
    for label, threads in (("torch default", default_threads), ("one thread", 1)):
        cfg = replace(base_config(model, shape, samples, "cpu"), cpu_threads=threads)
        with (
            tempfile.TemporaryDirectory() as tmp,
            open(os.devnull, "w") as quiet,
            determinism(cfg),
        ):
            opts = TrainOptions(Path(tmp), handle_signals=False, dry_run=True, stream=quiet)
            run = Trainer(cfg, opts, torch.device("cpu"), DistInfo())
            cost = {"gather": [0.0, 0.0], "forward+backward": [0.0, 0.0], "optimizer": [0.0, 0.0]}
            done = 0
            t0, c0 = time.perf_counter(), cpu_seconds()
            while done < steps + cfg.log_every:
                for x, y in run.train_loader:  # the loader's fetch is the batch gather
                    t1, c1 = time.perf_counter(), cpu_seconds()
                    run.forward_backward_step(x, y, sync=True)
                    t2, c2 = time.perf_counter(), cpu_seconds()
                    run.optimizer_step()
                    t3, c3 = time.perf_counter(), cpu_seconds()
                    if done >= cfg.log_every:
                        cost["forward+backward"][0] += c2 - c1
                        cost["forward+backward"][1] += t2 - t1
                        cost["optimizer"][0] += c3 - c2
                        cost["optimizer"][1] += t3 - t2
                        cost["gather"][0] += c1 - c0
                        cost["gather"][1] += t1 - t0
                    done += 1
                    t0, c0 = time.perf_counter(), cpu_seconds()
                    if done >= steps + cfg.log_every:
                        break
                else:
                    t0, c0 = time.perf_counter(), cpu_seconds()
            n_threads = os_threads()
        for phase, (c, w) in cost.items():
            print(
                f"{label + f' ({threads})':<34}{phase:<22}{c / steps * 1e3:12.3f}"
                f"{w / steps * 1e3:13.3f}{n_threads:9d}"
            )
            out[f"{label}:{phase}:cpu_ms"] = c / steps * 1e3
    # The GPU's side of a step, stood in for by a sleep: what do idle pool threads cost?
    x = torch.randn(4096, *shape)
    wait_s = 0.002
    auto = auto_cpu_threads("cuda", 1 << 30, 64 * math.prod(shape), default_threads)
    print(
        f"\n== a batch gather (64 x {'x'.join(map(str, shape))}) then {wait_s * 1e3:g} ms of "
        "sleep standing in for the GPU, 500 steps"
    )
    print(f"{'pool':<40}{'cpu-ms/step':>12}{'wall-ms/step':>13}{'cpu/wall':>10}{'threads':>9}")
    for label, threads in (("torch default", default_threads), ("cpu_threads auto on CUDA", auto)):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for count in (50, 500):  # warm-up, then the measured steps
                t0, c0 = time.perf_counter(), cpu_seconds()
                for _ in range(count):
                    idx = torch.randint(0, len(x), (64,))
                    batch = x[idx]  # the trainer's gather (ArrayDataset.__getitems__)
                    del batch
                    time.sleep(wait_s)
                c, w = cpu_seconds() - c0, time.perf_counter() - t0
            print(
                f"{label + f' ({threads})':<40}{c / count * 1e3:12.3f}{w / count * 1e3:13.3f}"
                f"{c / w:10.2f}{os_threads():9d}"
            )
            out[f"device-wait:{label}:cpu_per_wall"] = c / w
        finally:
            torch.set_num_threads(previous)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--samples", type=int, default=0, help="samples per run (0: per workload)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per variant")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--phases", action="store_true", help="also: threads and CPU per phase, idle-pool cost"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # both loops run in this process: same threads
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results = {name: run_workload(name, args) for name in names}
    if args.phases:
        results["phases"] = phases(args)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
