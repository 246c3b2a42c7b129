"""GPU passthrough through the real engine, without a GPU: the engine's NVIDIA device
driver is registered by the fake nvidia-container-runtime-hook on its PATH, so
`aibuild run --gpus ...` reaches the container exactly as `docker run --gpus` would.
The second engine has no hook: a GPU request fails there with a clear message and
leaves no container. The runs use the bootstrapped base image (no build needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

SHOW = 'echo "id=$(hostname)"; echo "NVD=${NVIDIA_VISIBLE_DEVICES-unset}"; ' + (
    'echo "NDC=${NVIDIA_DRIVER_CAPABILITIES-unset}"'
)
SMI_DATA = Path(__file__).resolve().parents[1] / "data" / "nvidia-smi"


def aibuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def values(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@pytest.mark.parametrize(
    ("gpus", "visible", "capabilities"),
    [
        ("all", "all", "unset"),
        ("2", "0,1", "unset"),
        ("device=0,1", "0,1", "unset"),
        ("device=1", "1", "unset"),
        ("all,capabilities=compute,utility", "all", "compute,utility"),
    ],
)
def test_gpus_reach_the_container(
    gpus: str,
    visible: str,
    capabilities: str,
    base_image: str,
    docker_cleanup: Any,
    hook_calls: Callable[[str], list[dict[str, Any]]],
) -> None:
    key, value = next(iter(docker_cleanup.label.items()))
    result = aibuild(
        "run", base_image, "--gpus", gpus, "--label", f"{key}={value}", "--", "sh", "-c", SHOW
    )
    assert result.returncode == 0, result.stderr
    seen = values(result.stdout)
    assert seen["NVD"] == visible
    # The engine sets NVIDIA_DRIVER_CAPABILITIES only for NVIDIA capabilities beyond "gpu";
    # images (nvidia/cuda, aibuild's CUDA images) set compute,utility themselves.
    assert seen["NDC"] == capabilities
    calls = hook_calls(seen["id"])  # the hostname is the container's short id
    assert calls, "the NVIDIA prestart hook was not called for this container"
    assert calls[0]["args"][-1] == "prestart"
    assert (
        docker_cleanup.client.containers.list(all=True, filters={"label": f"{key}={value}"}) == []
    )


def test_no_gpus_no_hook(
    base_image: str, hook_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    result = aibuild("run", base_image, "--gpus", "none", "--", "sh", "-c", SHOW)
    assert result.returncode == 0, result.stderr
    seen = values(result.stdout)
    assert seen["NVD"] == "unset"
    assert hook_calls(seen["id"]) == []


def test_engine_without_nvidia_runtime_is_a_clear_error(
    base_image: str,
    nohook_docker_host: str,
    nohook_docker_client: docker.DockerClient,
    unique_name: str,
) -> None:
    result = aibuild(
        "run",
        base_image,
        "--gpus",
        "all",
        "--label",
        f"ai.aibuild.test={unique_name}",
        "--",
        "true",
        env={"DOCKER_HOST": nohook_docker_host},
    )
    assert result.returncode == 1
    err = result.stderr
    assert "GPUs were requested (--gpus all)" in err
    assert nohook_docker_host in err
    assert "could not select device driver" in err
    assert "NVIDIA Container Toolkit" in err
    assert "--gpus none" in err
    assert "Traceback" not in err
    left = nohook_docker_client.containers.list(
        all=True, filters={"label": f"ai.aibuild.test={unique_name}"}
    )
    assert left == []


def test_bad_gpus_value_is_a_usage_error(base_image: str) -> None:
    result = aibuild("run", base_image, "--gpus", "device=", "--", "true")
    assert result.returncode == 2
    assert "invalid --gpus value" in result.stderr


def test_doctor_sees_the_engine_and_its_gpu_support(docker_host: str) -> None:
    result = aibuild(
        "doctor",
        "gpu-h100",
        "--json",
        env={"AIBUILD_NVIDIA_SMI_OUTPUT": str(SMI_DATA / "h100-580.csv")},
    )
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["engine"]["status"] == "ok"
    assert report["engine"]["address"] == docker_host
    assert report["engine"]["storage_driver"]
    assert checks["nvidia runtime"]["status"] == "ok", checks["nvidia runtime"]
    assert checks["driver >= min"]["status"] == "ok"
    assert checks["gpu 0 arch"]["status"] == "ok"
    assert result.returncode == (0 if report["ok"] else 1)


def test_doctor_on_the_engine_without_hook_fails_a_gpu_profile(nohook_docker_host: str) -> None:
    result = aibuild(
        "doctor",
        "gpu-h100",
        env={
            "DOCKER_HOST": nohook_docker_host,
            "AIBUILD_NVIDIA_SMI_OUTPUT": str(SMI_DATA / "h100-580.csv"),
        },
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("nvidia runtime"))
    assert "FAIL" in line
    assert "fix: install the NVIDIA Container Toolkit" in result.stdout
