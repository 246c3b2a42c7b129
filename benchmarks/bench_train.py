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
helps) should be faster still.
"""

from __future__ import annotations

import argparse
import json
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
from aibuild.train.loop import TrainOptions, run_training
from aibuild.train.models import build_model


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
        cpu_threads=torch.get_num_threads(),  # the plain loop's thread count: equal settings
    )


def plain_loop(cfg: TrainConfig) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) of the tutorial loop."""
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    data = load_synthetic(cfg)
    x, y = data.train.__getitems__(list(range(len(data.train))))
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True)
    model = build_model(cfg, data).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    seen = 0
    for batch_idx, (inputs, target) in enumerate(loader):
        if batch_idx == cfg.log_every:  # the trainer's rule: the first log window is warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu_start, seen = time.perf_counter(), time.process_time(), 0
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
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu_start)


def trainer(cfg: TrainConfig) -> tuple[float, float]:
    """(samples per wall second, per CPU second) of aibuild's loop, from its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = TrainOptions(output=Path(tmp), handle_signals=False, stream=open("/dev/null", "w"))  # noqa: SIM115
        try:
            summary = run_training(cfg, opts)
        finally:
            assert opts.stream is not None
            opts.stream.close()
    return float(summary["samples_per_s"]), float(summary["samples_per_cpu_s"])


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
    cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
    print(
        f"\n== {model} on {'x'.join(map(str, shape))}, {cfg.synthetic_samples} samples a run, "
        f"best of {args.repeats} interleaved runs",
        flush=True,
    )
    for r in range(args.repeats):
        for vname, (kind, vcfg) in variants.items():
            w, c = plain_loop(vcfg) if kind == "plain" else trainer(vcfg)
            wall[vname], cpu[vname] = max(wall[vname], w), max(cpu[vname], c)
            print(f"  run {r + 1}: {vname:<50} {w:10.1f} samples/s {c:10.1f} /cpu-s", flush=True)
    print(f"{'variant':<52}{'samples/s':>11}{'ratio':>8}{'samples/cpu-s':>15}{'ratio':>8}")
    ref_w, ref_c = wall["plain loop, batch 64"], cpu["plain loop, batch 64"]
    for vname in variants:
        print(
            f"{vname:<52}{wall[vname]:11.1f}{wall[vname] / ref_w:7.2f}x"
            f"{cpu[vname]:15.1f}{cpu[vname] / ref_c:7.2f}x"
        )
    eq = "trainer, batch 64 (equal settings)"
    rec = next(k for k in variants if k.endswith("(recommended)"))
    out = {
        "equal_wall_ratio": wall[eq] / ref_w,
        "equal_cpu_ratio": cpu[eq] / ref_c,
        "recommended_wall_ratio": wall[rec] / ref_w,
        "recommended_cpu_ratio": cpu[rec] / ref_c,
        "recommended_vs_plain_same_batch_cpu": cpu[rec] / cpu["plain loop, batch 256"],
    }
    print(
        f"trainer at equal settings: {out['equal_wall_ratio']:.2f}x the plain loop "
        f"(per CPU-second {out['equal_cpu_ratio']:.2f}x)"
    )
    print(
        f"trainer at recommended settings: {out['recommended_wall_ratio']:.2f}x the plain loop "
        f"at batch 64 (per CPU-second {out['recommended_cpu_ratio']:.2f}x; "
        f"{out['recommended_vs_plain_same_batch_cpu']:.2f}x the plain loop at batch 256)"
    )
    if cpu[rec] < cpu[eq]:
        print(
            "  (slower here: this workload is bound by arithmetic that this device does not "
            "speed up with bigger batches or channels_last; keep batch 64 on it)"
        )
    return {
        **{f"wall:{k}": v for k, v in wall.items()},
        **{f"cpu:{k}": v for k, v in cpu.items()},
        **out,
    }


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
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # both loops run in this process: same threads
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results = {name: run_workload(name, args) for name in names}
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
