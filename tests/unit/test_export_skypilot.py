"""The SkyPilot task, read by SkyPilot's own loader and run the way SkyPilot runs it.

SkyPilot's loader: ``sky.Task.from_yaml`` of the real ``skypilot`` package (pinned:
``SKYPILOT``), which checks the task against SkyPilot's schemas (unknown fields, resources,
file mounts, the task's ``config`` overrides) without launching anything. skypilot 0.14.1
needs ``click<8.2``, which conflicts with this project's environment, so it lives in a
virtual environment of its own, made once under ``.cache/`` (or ``$AIBUILD_TEST_SKYPILOT_VENV``)
from PyPI, and the loader runs there in a subprocess.

The ``run`` script is then run by bash as SkyPilot runs it on each node (its
``SKYPILOT_*`` variables and the task's ``envs`` set), with a ``torchrun`` on PATH that
records its argv; torchrun's own parser reads those, so that the nodes' rendezvous can be
compared and hostile trainer flags can be seen to arrive as written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from aibuild.cli import cli
from aibuild.errors import ExportError
from aibuild.export.job import ClusterJob, cluster_job
from aibuild.export.skypilot import accelerator_name, skypilot_task, skypilot_yaml
from aibuild.profile.resolve import plan_for

SKYPILOT = "skypilot==0.14.1"
REPO = Path(__file__).resolve().parents[2]
SKY_VENV = Path(
    os.environ.get("AIBUILD_TEST_SKYPILOT_VENV") or REPO / ".cache" / SKYPILOT.replace("==", "-")
)
INSTALL_TIMEOUT = 1200
DIGEST = "sha256:" + "56" * 32
IMAGE = f"registry.example.com/team/train@{DIGEST}"
HOSTILE = ("--lr", "1e-3; touch PWNED", "--name", "$(touch PWNED) `touch PWNED` 'q\"\n")

# Runs in SkyPilot's venv: load each task YAML, print what SkyPilot made of it.
LOADER = textwrap.dedent(
    """
    import json, sys
    import sky
    from sky.provision.runpod import utils as runpod
    from sky.utils import gpu_names

    out = {"gpu_names": sorted(set(gpu_names.CANONICAL_GPU_NAMES) | set(runpod.GPU_NAME_MAP))}
    tasks = []
    for path in sys.argv[1:]:
        try:
            task = sky.Task.from_yaml(path)
        except Exception as exc:  # the loader's verdict, reported to the test
            tasks.append({"error": f"{type(exc).__name__}: {exc}"})
            continue
        (res,) = task.resources
        mounts = {
            dst: {"source": st.source, "mode": st.mode.value}
            for dst, st in task.storage_mounts.items()
        }
        tasks.append({
            "name": task.name,
            "num_nodes": task.num_nodes,
            "accelerators": res.accelerators,
            "image_id": res.image_id,
            "cpus": res.cpus,
            "memory": res.memory,
            "envs": task.envs,
            "file_mounts": task.file_mounts or {},
            "storage_mounts": mounts,
            "setup": task.setup,
            "run": task.run,
            "config": task.to_yaml_config()["resources"].get("_cluster_config_overrides"),
        })
    out["tasks"] = tasks
    print(json.dumps(out, default=str))
    """
)


def gpu_job(**kwargs: Any) -> ClusterJob:
    fields: dict[str, Any] = {
        "nodes": 2,
        "image": IMAGE,
        "cpus": 32,
        "memory": "500g",
        "data": "s3://team-data/mnist",
        "output": "gs://team-runs/exp-1",
        "env": [("WANDB_MODE", "offline")],
        "trainer_args": ("--epochs", "3", *HOSTILE),
    }
    fields.update(kwargs)
    return cluster_job(plan_for("gpu-h100x8"), **fields)


def cpu_job(**kwargs: Any) -> ClusterJob:
    fields: dict[str, Any] = {"nodes": 3, "nproc_per_node": 2, "image": IMAGE, "data": "./digits"}
    fields.update(kwargs)
    return cluster_job(plan_for("cpu"), **fields)


# --------------------------------------------------------------------------- SkyPilot's loader


@pytest.fixture(scope="session")
def sky_python() -> Path:
    """The python of a venv holding ``SKYPILOT``, made once (about a minute, from PyPI)."""
    python = SKY_VENV / "bin" / "python"
    if (SKY_VENV / ".aibuild-complete").exists():
        return python
    building = SKY_VENV.with_name(f"{SKY_VENV.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
    install = subprocess.run(
        [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", SKYPILOT],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert install.returncode == 0, f"pip install {SKYPILOT} failed:\n{install.stderr[-3000:]}"
    (building / ".aibuild-complete").write_text(SKYPILOT + "\n")
    try:
        building.rename(SKY_VENV)  # a venv runs from where it lies: `python -m` needs no path
    except OSError:  # another session finished first: use its venv
        shutil.rmtree(building, ignore_errors=True)
    return python


def sky_load(sky_python: Path, tmp_path: Path, texts: list[str]) -> dict[str, Any]:
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"task-{i}.yaml"
        path.write_text(text)
        paths.append(str(path))
    home = tmp_path / "home"  # SkyPilot keeps its state in ~/.sky
    home.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    }
    result = subprocess.run(
        [str(sky_python), "-c", LOADER, *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_skypilot_loads_the_tasks(sky_python: Path, tmp_path: Path) -> None:
    gpu, cpu = skypilot_yaml(gpu_job()), skypilot_yaml(cpu_job())
    broken = yaml.safe_load(gpu)
    broken["resources"]["gpus"] = 8  # SkyPilot has no such field
    misplaced = yaml.safe_load(gpu)
    misplaced["shm_size"] = "64g"
    loaded = sky_load(
        sky_python, tmp_path, [gpu, cpu, yaml.safe_dump(broken), yaml.safe_dump(misplaced)]
    )
    g, c, bad, bad2 = loaded["tasks"]
    assert "error" not in g, g
    assert "error" not in c, c
    # the loader can fail: its config checks refuse what SkyPilot does not know
    assert "InvalidSkyPilotConfigError" in bad["error"] and "gpus" in bad["error"]
    assert "shm_size" in bad2["error"]

    assert (g["name"], g["num_nodes"]) == ("aibuild-gpu-h100x8", 2)
    assert g["accelerators"] == {"H100": 8}
    assert g["image_id"] == {"null": f"docker:{IMAGE}"}  # SkyPilot's {region: image}
    assert (g["cpus"], g["memory"]) == ("32+", "500+")
    assert g["storage_mounts"] == {
        "/data": {"source": "s3://team-data/mnist", "mode": "MOUNT"},
        "/output": {"source": "gs://team-runs/exp-1", "mode": "MOUNT"},
    }
    assert g["envs"]["WANDB_MODE"] == "offline" and g["envs"]["AIBUILD_OUTPUT"] == "/output"
    assert g["envs"]["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert g["config"] == {"docker": {"run_options": ["--shm-size=64g"]}}
    assert g["setup"] == "aibuild train --selftest\n"
    assert g["run"] == yaml.safe_load(gpu)["run"]  # the script SkyPilot runs, unchanged

    assert c["num_nodes"] == 3 and c["accelerators"] is None and c["setup"] is None
    assert c["file_mounts"] == {"/data": "./digits"} and c["storage_mounts"] == {}
    assert c["config"] == {"docker": {"run_options": ["--shm-size=2g"]}}

    # every built-in GPU profile asks for an accelerator by a name SkyPilot has
    names = set(loaded["gpu_names"])
    for profile in ("gpu-a100", "gpu-a10g", "gpu-b200", "gpu-h100x8", "gpu-h200", "gpu-l4"):
        assert accelerator_name(plan_for(profile).gpu) in names, profile
    for profile in ("gpu-rtx4090", "gpu-rtx5090", "gpu-t4", "gpu-v100"):
        assert accelerator_name(plan_for(profile).gpu) in names, profile


# --------------------------------------------------------------------------- the run script


def run_on_nodes(task: dict[str, Any], tmp_path: Path, gpus_per_node: int) -> list[Any]:
    """Run ``task["run"]`` with bash once per node as SkyPilot does; torchrun's parsed args."""
    from torch.distributed.run import get_args_parser

    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "argv.jsonl"
    (fake / "torchrun").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    (fake / "torchrun").chmod(0o755)
    ips = [f"10.1.0.{i + 7}" for i in range(task["num_nodes"])]
    work = tmp_path / "work"
    work.mkdir()
    for rank in range(task["num_nodes"]):
        env = {
            "PATH": f"{fake}:/usr/bin:/bin",
            **{k: str(v) for k, v in task["envs"].items()},
            "SKYPILOT_NODE_RANK": str(rank),
            "SKYPILOT_NODE_IPS": "\n".join(ips),
            "SKYPILOT_NUM_NODES": str(len(ips)),
            "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus_per_node),
        }
        done = subprocess.run(
            ["bash", "-c", task["run"]], env=env, cwd=work, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    assert not (work / "PWNED").exists()  # nothing in the trainer's flags ran
    lines = record.read_text().splitlines()
    assert len(lines) == task["num_nodes"]
    return [get_args_parser().parse_args(json.loads(line)) for line in lines]


@pytest.mark.parametrize("nodes", [1, 2, 5])
def test_gpu_nodes_agree_on_the_rendezvous(nodes: int, tmp_path: Path) -> None:
    task = skypilot_task(gpu_job(nodes=nodes))
    args = run_on_nodes(task, tmp_path, gpus_per_node=8)
    assert {(a.nnodes, a.nproc_per_node, a.rdzv_backend) for a in args} == {
        (str(nodes), "8", "static")
    }
    assert {a.rdzv_endpoint for a in args} == {"10.1.0.7:29500"}  # the first node hosts
    assert [a.node_rank for a in args] == list(range(nodes))
    # the trainer gets its flags exactly as given, hostile ones included
    assert {tuple(a.training_script_args) for a in args} == {("train", "--epochs", "3", *HOSTILE)}
    assert {(a.module, a.training_script, a.tee) for a in args} == {(True, "aibuild", "3")}


def test_cpu_nodes_run_the_asked_processes(tmp_path: Path) -> None:
    task = skypilot_task(cpu_job(rdzv_port=23456))
    args = run_on_nodes(task, tmp_path, gpus_per_node=0)
    assert {(a.nnodes, a.nproc_per_node, a.rdzv_endpoint) for a in args} == {
        ("3", "2", "10.1.0.7:23456")
    }
    assert [a.node_rank for a in args] == [0, 1, 2]


def test_scripts_are_bash() -> None:
    task = skypilot_task(gpu_job())
    for script in (task["setup"], task["run"]):
        assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0


# --------------------------------------------------------------------------- contents, errors


def test_accelerator_names() -> None:
    assert accelerator_name("NVIDIA H100") == "H100"
    assert accelerator_name("NVIDIA A10G (AWS)") == "A10G"
    assert accelerator_name("GeForce RTX 4090") == "RTX4090"
    assert accelerator_name(None) is None
    task = skypilot_task(gpu_job(gpus="4", nproc_per_node=4), accelerators="A100-80GB")
    assert task["resources"]["accelerators"] == "A100-80GB:4"
    assert skypilot_task(gpu_job(), "H100-MEGA:8")["resources"]["accelerators"] == "H100-MEGA:8"
    with pytest.raises(ExportError, match="--accelerators 'H100:eight' is not"):
        skypilot_task(gpu_job(), "H100:eight")


def test_output_must_be_a_bucket() -> None:
    with pytest.raises(ExportError, match="--output '/mnt/runs': SkyPilot nodes cannot write"):
        skypilot_task(gpu_job(output="/mnt/runs"))
    with pytest.raises(ExportError, match="control character"):
        skypilot_task(gpu_job(data="s3://bucket/a\nb"))


def test_time_limit_is_refused() -> None:
    with pytest.raises(ExportError, match="--time does not apply to a SkyPilot task"):
        skypilot_yaml(gpu_job(time_limit="1:00:00"))


def test_cli_writes_the_task(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    result = CliRunner().invoke(
        cli,
        ["export", "skypilot", "gpu-l4", "--nodes", "4", "-f", str(path), "--", "--epochs", "2"],
    )
    assert result.exit_code == 0, result.output
    task = yaml.safe_load(path.read_text())
    assert task["num_nodes"] == 4 and task["resources"]["accelerators"] == "L4:1"
    assert task["run"].rstrip().endswith("-m aibuild train --epochs 2")
    bad = CliRunner().invoke(cli, ["export", "skypilot", "cpu", "--output", "./runs"])
    assert bad.exit_code == 1 and "SkyPilot nodes cannot write" in bad.output
    assert "Traceback" not in bad.output
