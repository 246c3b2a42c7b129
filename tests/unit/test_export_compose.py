"""The Compose service, by structure: it is `aibuild run`'s container config (the real
Compose reads it in tests/integration/test_cluster.py)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from aibuild.export.compose import compose_yaml
from aibuild.export.job import cluster_job
from aibuild.profile.resolve import plan_for


def service(profile: str, **kwargs: object) -> dict:
    job = cluster_job(plan_for(profile), **kwargs)  # type: ignore[arg-type]
    document = yaml.safe_load(compose_yaml(job))
    assert list(document) == ["services"]
    return document["services"]["train"]


def test_gpus_by_count_with_torchrun_per_gpu() -> None:
    train = service("gpu-h100x8")
    assert train["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 8, "capabilities": ["gpu"]}
    ]
    assert train["entrypoint"] == ["torchrun", "--nproc-per-node", "8", "-m", "aibuild", "train"]
    assert train["shm_size"] == "64g"
    assert train["ulimits"] == {
        "memlock": {"soft": -1, "hard": -1},
        "stack": {"soft": 67108864, "hard": 67108864},
    }


def test_gpus_by_device_ids(tmp_path: Path) -> None:
    train = service(
        "gpu-h100x8",
        gpus="device=2,3",
        data=str(tmp_path),
        output=str(tmp_path / "out"),
        trainer_args=("--epochs", "1"),
    )
    (device,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "device_ids": ["2", "3"], "capabilities": ["gpu"]}
    assert train["command"] == ["--epochs", "1"]
    assert train["entrypoint"][:3] == ["torchrun", "--nproc-per-node", "2"]
    assert train["volumes"] == [
        {"type": "bind", "source": str(tmp_path), "target": "/data", "read_only": True},
        {"type": "bind", "source": str(tmp_path / "out"), "target": "/output"},
    ]
    assert train["user"] == f"{os.getuid()}:{os.getgid()}"  # as aibuild run --output
    assert train["environment"]["AIBUILD_OUTPUT"] == "/output"


def test_cpu_keeps_the_entrypoint_and_asks_for_no_gpu() -> None:
    train = service("cpu", trainer_args=("--epochs", "1"))
    assert "deploy" not in train and "entrypoint" not in train
    assert train["command"] == ["--epochs", "1"]


def test_dollars_are_not_interpolated() -> None:
    train = service("cpu", env=(("X", "$HOME"),), trainer_args=("--set", "a=${b}"))
    assert train["environment"]["X"] == "$$HOME"
    assert train["command"] == ["--set", "a=$${b}"]
