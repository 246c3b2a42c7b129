"""Two processes under torchrun on the host: gloo DDP, DistributedSampler, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "aibuild",
        "train",
        "--model",
        "mlp",
        "--epochs",
        "3",
        "--lr",
        "0.003",
        "--output",
        str(out),
    ]
    env_drop = (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "AIBUILD_PROFILE",
        "AIBUILD_DATA",
        "AIBUILD_OUTPUT",
    )
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # only rank 0 logs ...
    assert proc.stdout.count("data: mnist from") == 1, proc.stdout
    assert proc.stdout.count("completed:") == 1
    # ... and writes: one line per step, not two
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "train"]
    assert steps == sorted(set(steps)) and steps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 1497 samples split over 2 ranks: 749 each, 12 steps of 64 per epoch
    assert summary["steps"] == 36
    assert summary["eval"]["accuracy"] > 0.8, summary["eval"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "model.pt",
        "summary.json",
    ]
    assert not list(out.glob("**/*.tmp"))
