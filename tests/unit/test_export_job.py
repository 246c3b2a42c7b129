"""The request checked against the profile, the image pinned from build records, and the
CLI's one-line errors for bad input (no scheduler needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aibuild.errors import AibuildError, ExportError
from aibuild.export.job import (
    Rendezvous,
    cluster_job,
    pinned_image,
    quantity,
    size_bytes,
    time_seconds,
)
from aibuild.image.record import BuildResult, record_push, write_record
from aibuild.profile.plan import BuildPlan
from aibuild.profile.resolve import plan_for
from tests.unit.conftest import run_cli

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def h100x8() -> BuildPlan:
    return plan_for("gpu-h100x8")


@pytest.fixture(scope="module")
def cpu() -> BuildPlan:
    return plan_for("cpu")


def test_defaults_come_from_the_profile(h100x8: BuildPlan) -> None:
    job = cluster_job(h100x8, nodes=4)
    assert (job.nodes, job.gpus_per_node, job.nproc_per_node) == (4, 8, 8)
    assert job.name == "aibuild-gpu-h100x8"
    assert job.shm_bytes == 64 << 30
    env = dict(job.environment())
    # NCCL_DEBUG is the profile's (baked into the image), so the job leaves it alone
    assert "NCCL_DEBUG" not in env and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_cpu_profile_runs_one_process_without_gpus(cpu: BuildPlan) -> None:
    job = cluster_job(cpu, nodes=2)
    assert (job.gpus_per_node, job.nproc_per_node) == (0, 1)
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in dict(job.environment())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "--nodes 0 is out of bounds: between 1 and"),
        ({"gpus": "9"}, "9 GPUs per node asked for, but profile gpu-h100x8 has fewer"),
        ({"gpus": "device=0,1,2,3,4,5,6,7,8"}, "hardware.gpus is 8"),
        ({"nproc_per_node": 9}, "--nproc-per-node 9 is more than the 8 GPUs per node"),
        ({"image": "Team/Train:1"}, "not an image reference: 'Team/Train:1'"),
        ({"memory": "lots"}, "--mem 'lots' is not a size"),
        ({"time_limit": "1:2:3:4"}, "--time '1:2:3:4' is not a time limit"),
        ({"name": "Bad_Name"}, "--name 'Bad_Name' is not a job name"),
        ({"trainer_args": ("python", "x.py")}, "ARGS after -- must be trainer flags"),
        ({"rdzv_port": 80}, "--rdzv-port 80 is out of bounds: between 1,024 and 65,535"),
    ],
)
def test_bad_requests_are_one_clear_error(h100x8: BuildPlan, kwargs: dict, message: str) -> None:
    with pytest.raises(AibuildError) as info:
        cluster_job(h100x8, **kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_gpus_on_a_cpu_profile_are_refused(cpu: BuildPlan) -> None:
    with pytest.raises(ExportError, match="it is a CPU profile"):
        cluster_job(cpu, gpus="1")


def test_sizes_and_times() -> None:
    assert size_bytes("16g", "x") == 16 << 30
    assert size_bytes("512", "x") == 512
    assert quantity(16 << 30) == "16Gi"
    assert quantity(1536 << 20) == "1536Mi"
    assert quantity(1000) == "1000"
    assert time_seconds("90") == 5400
    assert time_seconds("10:30") == 630
    assert time_seconds("1:00:00") == 3600
    assert time_seconds("2-00") == 172800
    assert time_seconds("1-2:3") == 93780
    assert time_seconds("1-2:3:4") == 93784
    with pytest.raises(ExportError):
        time_seconds("0")


def test_rendezvous_command_lines() -> None:
    c10d = Rendezvous(2, 4, "host:29500", run_id="42").torchrun(["--epochs", "1"])
    assert c10d == [
        "torchrun",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "4",
        "--tee",
        "3",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "host:29500",
        "--rdzv-id",
        "42",
        "-m",
        "aibuild",
        "train",
        "--epochs",
        "1",
    ]
    static = Rendezvous(3, 1, "job-0.job:29500", node_rank="$(NODE_RANK)").torchrun()
    assert static[static.index("--rdzv-backend") + 1] == "static"
    assert static[static.index("--node-rank") + 1] == "$(NODE_RANK)"


def test_torchrun_accepts_the_command_line() -> None:
    """torchrun's own argument parser reads what every target writes."""
    from torch.distributed.run import get_args_parser

    argv = Rendezvous(2, 4, "host:29511", run_id="7").torchrun(["--epochs", "1"])
    args = get_args_parser().parse_args(argv[1:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "4", "c10d")
    assert (args.rdzv_endpoint, args.rdzv_id, args.module) == ("host:29511", "7", True)
    assert args.training_script == "aibuild"
    assert args.training_script_args == ["train", "--epochs", "1"]


# --------------------------------------------------------------------------- pinning


def _record(plan: BuildPlan, directory: Path, *, pushed: str | None) -> Path:
    result = BuildResult(
        image_id="sha256:" + "cd" * 32,
        tags=[plan.image_ref],
        plan=plan,
        record_path=directory,
        steps=[],
        duration=1.0,
        python_packages=["torch==2.13.0"],
    )
    path = write_record(result, {}, directory)
    if pushed:
        problem = record_push(
            path, ref=pushed, digest=DIGEST, pinned=f"{pushed.split(':')[0]}@{DIGEST}", method="x"
        )
        assert problem is None
    return path


def test_image_is_pinned_from_the_build_record(tmp_path: Path, cpu: BuildPlan) -> None:
    ref = "registry.example.com/team/train:cpu"
    _record(cpu, tmp_path, pushed=ref)
    image, note = pinned_image(ref, cpu, tmp_path)
    assert image == f"registry.example.com/team/train@{DIGEST}"
    assert "pinned by its build record" in note
    # the profile's own tag was built but never pushed: not pinned, and the note says so
    image, note = pinned_image(cpu.image_ref, cpu, tmp_path)
    assert image == cpu.image_ref
    assert "not pinned by digest" in note


def test_newest_build_decides(tmp_path: Path, cpu: BuildPlan) -> None:
    """An older build's push does not pin the tag once a newer build (unpushed) holds it."""
    import time

    _record(cpu, tmp_path, pushed=cpu.image_ref)
    assert pinned_image(cpu.image_ref, cpu, tmp_path)[0].endswith(DIGEST)
    time.sleep(1.1)  # record names are per second
    _record(cpu, tmp_path, pushed=None)
    assert pinned_image(cpu.image_ref, cpu, tmp_path)[0] == cpu.image_ref


def test_a_digest_is_kept(cpu: BuildPlan, tmp_path: Path) -> None:
    ref = f"registry.example.com/x@{DIGEST}"
    assert pinned_image(ref, cpu, tmp_path)[0] == ref


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "slurm", "cpu", "--nodes", "0"], "--nodes 0 is out of bounds: between 1 and"),
        (["export", "k8s", "cpu", "--nodes", "0"], "--nodes 0 is out of bounds: between 1 and"),
        (
            ["export", "slurm", "gpu-h100x8", "--gpus-per-node", "16"],
            "16 GPUs per node asked for, but profile gpu-h100x8 has fewer: hardware.gpus is 8",
        ),
        (["export", "k8s", "gpu-l4", "--gpus-per-node", "2"], "hardware.gpus is 1"),
        (["export", "compose", "gpu-l4", "--gpus", "2"], "hardware.gpus is 1"),
        (["export", "slurm", "cpu", "--image", "not a ref"], "not an image reference"),
        (["export", "k8s", "cpu", "--image", "x@sha256:12"], "not an image reference"),
        (["run", "cpu", "--nodes", "0"], "--nodes 0 is out of bounds: between 1 and"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(argv: list[str], message: str) -> None:
    result = run_cli(argv)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("aibuild: image")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_errors_exit_2() -> None:
    result = run_cli(["export", "slurm", "cpu", "--runtime", "podman"])
    assert result.exit_code == 2
    result = run_cli(["export", "slurm", "cpu", "--wait"])
    assert result.exit_code == 2
    assert "--wait needs --submit" in result.stderr


def test_cli_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "job.sbatch"
    result = run_cli(["export", "slurm", "cpu", "--nodes", "2", "-f", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert target.read_text().startswith("#!/bin/bash\n")
    assert f"wrote the sbatch script to {target}" in result.stderr
