"""What `aibuild run` asks the engine for: entrypoint, mounts, user, limits (no engine needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aibuild.profile.load import is_profile_ref
from aibuild.run.config import (
    ContainerOptions,
    container_command,
    container_config,
    env_pairs,
)
from aibuild.run.gpus import parse_gpus
from tests.unit.conftest import run_cli


def test_no_args_keeps_the_image_entrypoint() -> None:
    assert container_command([]) == (None, None)


def test_trainer_flags_follow_the_entrypoint() -> None:
    assert container_command(["--epochs", "1"]) == (None, ["--epochs", "1"])


def test_other_args_replace_the_entrypoint() -> None:
    assert container_command(["python", "-c", "print(1)"]) == (["python"], ["-c", "print(1)"])


def test_nproc_runs_torchrun() -> None:
    entrypoint, command = container_command(["--dry-run"], nproc_per_node=4)
    assert entrypoint == ["torchrun", "--nproc-per-node", "4", "-m", "aibuild", "train"]
    assert command == ["--dry-run"]


def test_nproc_with_a_custom_command_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot wrap a custom command"):
        container_command(["python"], nproc_per_node=2)


def test_training_defaults() -> None:
    config = container_config(ContainerOptions(), "img:1")
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in config["ulimits"]}
    assert limits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert config["shm_size"] == "2g"
    assert "device_requests" not in config
    assert "user" not in config
    owner = config["labels"].pop("ai.aibuild.run.owner")
    assert config["labels"] == {"ai.aibuild.run": "1"}
    assert owner.split(":")[1] == str(os.getpid())  # the attached run that owns it
    assert config["auto_remove"] is True


def test_ipc_host_replaces_shm() -> None:
    config = container_config(ContainerOptions(ipc="host", shm_size="16g"), "img:1")
    assert config["ipc_mode"] == "host"
    assert "shm_size" not in config


def test_data_read_only_output_as_caller(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    config = container_config(ContainerOptions(data=str(data), output=str(out)), "img:1")
    mounts = {m["Target"]: m for m in config["mounts"]}
    assert mounts["/data"]["Source"] == str(data.resolve())
    assert mounts["/data"]["ReadOnly"] is True
    assert mounts["/output"]["Source"] == str(out.resolve())
    assert not mounts["/output"].get("ReadOnly")
    assert config["environment"]["AIBUILD_DATA"] == "/data"
    assert config["environment"]["AIBUILD_OUTPUT"] == "/output"
    assert config["user"] == f"{os.getuid()}:{os.getgid()}"
    assert config["environment"]["HOME"] == "/tmp"


def test_gpus_and_env() -> None:
    options = ContainerOptions(gpus=parse_gpus("device=0,1"), env=(("A", "1"),), detach=True)
    config = container_config(options, "img:1")
    assert config["device_requests"][0]["DeviceIDs"] == ["0", "1"]
    assert config["environment"] == {"A": "1"}
    assert config["auto_remove"] is True


def test_env_pairs() -> None:
    assert env_pairs(["A=1", "B", "C"], {"B": "from-host"}) == [("A", "1"), ("B", "from-host")]
    with pytest.raises(ValueError):
        env_pairs(["=x"], {})


def test_profile_or_image() -> None:
    assert is_profile_ref("cpu")
    assert is_profile_ref("gpu-a100.yaml")
    assert not is_profile_ref("python:3.11-slim")
    assert not is_profile_ref("aibuild:cpu-torch2.13.0-cpu")


def test_bad_gpus_is_a_usage_error() -> None:
    result = run_cli(["run", "cpu", "--gpus", "lots"])
    assert result.exit_code == 2
    assert "invalid --gpus value 'lots'" in result.output


def test_nproc_with_command_is_a_usage_error() -> None:
    result = run_cli(["run", "cpu", "--nproc-per-node", "2", "--", "python"])
    assert result.exit_code == 2
    assert "cannot wrap a custom command" in result.output


def test_unreachable_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/aibuild-test.sock")
    result = run_cli(["run", "cpu", "--gpus", "none"])
    assert result.exit_code == 1
    assert "cannot reach the Docker engine at unix:///nonexistent/aibuild-test.sock" in (
        result.output
    )
    assert "DOCKER_HOST" in result.output
    assert "Traceback" not in result.output


def test_the_profiles_ipc_host_is_applied() -> None:
    """gpu-h100x8 says run.ipc: host (NCCL's shared memory across 8 ranks): it reaches the
    container config unless --ipc says otherwise."""
    from aibuild.profile.resolve import plan_for
    from aibuild.run.config import RunTarget, with_plan_defaults

    plan = plan_for("gpu-h100x8")
    target = RunTarget(plan.image_ref, plan)
    config = container_config(with_plan_defaults(ContainerOptions(), target), "img:1")
    assert config["ipc_mode"] == "host" and "shm_size" not in config
    own = with_plan_defaults(ContainerOptions(ipc="private"), target)
    private = container_config(own, "img:1")
    assert private["ipc_mode"] == "private" and private["shm_size"] == "64g"  # the profile's
    plain = container_config(
        with_plan_defaults(ContainerOptions(), RunTarget("x", plan_for("cpu"))), "x"
    )
    assert "ipc_mode" not in plain
