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


def _torchrun(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env_drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "AIBUILD_PROFILE", "AIBUILD_DATA")
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)


GROUP_AFTER_TRAINING = """
import os, sys, weakref
from pathlib import Path
import torch.distributed as dist
from aibuild.train.config import load_training_config
from aibuild.train.distributed import init_distributed
from aibuild.train.loop import TrainOptions, run_training

init_distributed("cpu")  # run_training joins this group
group = weakref.ref(dist.group.WORLD)
cfg = load_training_config({"model": "mlp", "epochs": 1, "max_steps": 2, "eval": False})
out = Path(sys.argv[1]) / os.environ["RANK"]
run_training(cfg, TrainOptions(output=out, stream=open(os.devnull, "w")))
print(f"rank {os.environ['RANK']} group alive after training: {group() is not None}")
"""


@pytest.mark.slow
def test_the_process_group_is_gone_when_training_returns(tmp_path: Path) -> None:
    """The gloo group's C++ object (its worker threads) dies before the interpreter
    finalizes: destroyed there, a worker releasing a collective's tensor aborts the rank
    ("terminate called without an active exception"). torch.distributed.nn.functional
    binding the group as a default argument (imported by DDP after init) and the DDP
    wrapper alive at destroy_process_group both kept it alive."""
    script = tmp_path / "group_after.py"
    script.write_text(GROUP_AFTER_TRAINING)
    proc = _torchrun(script, str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} group alive after training: False" in proc.stdout, proc.stdout
    assert "still referenced" not in proc.stderr


LINGERING_GROUP = """
import os, sys
import torch.distributed as dist
from aibuild.train.cli import main
from aibuild.train.distributed import init_distributed

init_distributed("cpu")
held = dist.group.WORLD  # as a library could: the group outlives destroy_process_group
flags = {"model": "mlp", "epochs": 1, "max_steps": 2}
out = os.path.join(sys.argv[1], os.environ["RANK"])
code = main(None, None, out, ("eval=false",), None, False, False, flags)
print("returned to the interpreter", code)
"""


@pytest.mark.slow
def test_a_worker_whose_group_lingers_exits_0_without_finalizing(tmp_path: Path) -> None:
    """When something still holds the group, the worker says so and ends with a flushed
    os._exit(0) after training rather than let finalization destroy gloo."""
    script = tmp_path / "lingering.py"
    script.write_text(LINGERING_GROUP)
    proc = _torchrun(script, str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("max_steps: 2 steps") == 1, proc.stdout  # rank 0's, flushed
    assert proc.stderr.count("process group is still referenced") == 2, proc.stderr
    assert "returned to the interpreter" not in proc.stdout
    assert (tmp_path / "out" / "0" / "summary.json").is_file()
