"""A real CUDA image, built and checked without a GPU (heavy tier: `make test-heavy`).

The gpu-h200 profile with torch 2.13.0 (PyPI's own build: CUDA 13.0, the nvidia-* wheels)
is built on the bootstrapped Debian base from the CUDA wheelhouse that
`scripts/make-cuda-wheelhouse.sh` fills with `aibuild wheelhouse` (about 3 GB, reused).
Then, inside the image: torch's CUDA is the plan's, cuDNN and NCCL load and say their
versions, the compiled arch list covers the GPU, libtorch_cuda.so resolves every library
but the driver's libcuda.so.1; through the fake NVIDIA hook `aibuild run --gpus all`
sees the NVIDIA variables; the selftest says in one line that no GPU works. The image
is removed at the end (it is about 5 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

pytestmark = pytest.mark.heavy

SETS = ("--set", "software.python=3.11", "--set", "image.name=aibuild-test/cuda")
REF = "aibuild-test/cuda:gpu-h200-torch2.13.0-cu130"
CHECK = r"""
import json, torch
print(json.dumps({
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
    "nccl": list(torch.cuda.nccl.version()),
    "arch_flags": torch._C._cuda_getArchFlags(),
    "available": torch.cuda.is_available(),
}))
"""
LDD = "ldd /opt/venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so"


def cli(*args: str, cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        cwd=cwd,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def cuda_wheelhouse() -> Path:
    value = os.environ.get("AIBUILD_TEST_CUDA_WHEELHOUSE")
    assert value, "AIBUILD_TEST_CUDA_WHEELHOUSE is unset: run `make test-heavy`"
    path = Path(value)
    assert list(path.glob("torch-2.13.0-*.whl")), f"no CUDA torch wheel in {path}"
    return path


@pytest.fixture(scope="module")
def cuda_image(
    base_image: str,
    cuda_wheelhouse: Path,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The CUDA image's build result (--json), removed with its dangling layers after."""
    cwd = tmp_path_factory.mktemp("cuda-build")
    built = cli(
        "image", "gpu-h200", "--base-image", base_image, "--wheelhouse", str(cuda_wheelhouse),
        *SETS, "--json", cwd=cwd,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-5000:]
    result: dict[str, Any] = json.loads(built.stdout)
    result["cwd"] = cwd
    yield result
    docker_client.images.remove(result["image_id"], force=True)
    docker_client.images.prune(filters={"dangling": True})


def in_image(client: docker.DockerClient, image: str, *command: str) -> str:
    out = client.containers.run(
        image, list(command), entrypoint=[], remove=True, network_disabled=True
    )
    return bytes(out).decode()


def test_one_cuda_stack_built_from_torchs_wheels(
    cuda_image: dict[str, Any], docker_client: docker.DockerClient, base_image: str
) -> None:
    record = json.loads(Path(cuda_image["cwd"], cuda_image["record"]).read_text())
    plan = record["plan"]
    assert (plan["cuda"], plan["cuda_source"], plan["cuda_full"]) == ("13.0", "wheels", None)
    assert plan["runtime_image"] == base_image  # no nvidia/cuda anywhere
    packages = {p.split("==")[0].lower() for p in record["python_packages"]}
    assert {"torch", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cublas"} <= packages
    image = docker_client.images.get(cuda_image["image_id"])
    env = dict(e.split("=", 1) for e in image.attrs["Config"]["Env"])
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib:/usr/local/nvidia/lib64"
    assert env["PATH"].startswith("/usr/local/nvidia/bin:")
    assert "CUDA_VERSION" not in env  # else the toolkit treats it as a legacy image


def test_torch_cuda_cudnn_nccl_and_arch_inside(
    cuda_image: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    facts = json.loads(in_image(docker_client, cuda_image["image_id"], "python", "-c", CHECK))
    assert facts["cuda"] == "13.0"  # the plan's
    assert isinstance(facts["cudnn"], int) and facts["cudnn"] >= 90000
    assert len(facts["nccl"]) == 3 and facts["nccl"][0] >= 2
    assert "sm_90" in facts["arch_flags"].split()  # the H200's compute capability 9.0
    assert facts["available"] is False  # no GPU here, and nothing pretends otherwise
    linked = in_image(docker_client, cuda_image["image_id"], "sh", "-c", LDD).splitlines()
    missing = {ln.split()[0] for ln in linked if "not found" in ln}
    assert missing <= {"libcuda.so.1"}, missing  # only the driver's, which the toolkit mounts
    cudart = next(ln for ln in linked if "libcudart.so" in ln)
    # torch's own CUDA, found through its RPATH ($ORIGIN/../../nvidia/...)
    assert "/site-packages/torch/lib/../../nvidia/" in cudart, cudart


def test_gpus_reach_the_cuda_image_through_the_hook(
    cuda_image: dict[str, Any], hook_calls: Any
) -> None:
    shown = cli(
        "run", cuda_image["image_id"], "--gpus", "all", "--", "sh", "-c",
        "hostname; env | grep ^NVIDIA_ | sort", cwd=cuda_image["cwd"],
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "NVIDIA_VISIBLE_DEVICES=all" in lines
    assert "NVIDIA_REQUIRE_CUDA=cuda>=13.0" in lines
    assert hook_calls(lines[0]), "the NVIDIA prestart hook was not called"


def test_selftest_says_no_gpu_works(cuda_image: dict[str, Any]) -> None:
    result = cli(
        "run", cuda_image["image_id"], "--gpus", "none", "--", "--selftest", cwd=cuda_image["cwd"]
    )
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("selftest failed")]
    assert len(failed) == 1 and "GPU" in failed[0], result.stderr
    assert "Traceback" not in result.stderr


def test_image_size_is_near_its_floor(
    cuda_image: dict[str, Any], docker_client: docker.DockerClient, base_image: str
) -> None:
    """At most 1.1x the floor: the base, plus Python (its apt layer), plus the installed
    wheels (the venv). Two CUDA stacks would add gigabytes."""
    image = docker_client.images.get(cuda_image["image_id"])
    base = docker_client.images.get(base_image).attrs["Size"]
    venv = int(in_image(docker_client, image.id, "du", "-sb", "/opt/venv").split()[0])
    history = docker_client.api.history(image.id)
    python = max(h["Size"] for h in history if "apt-get install" in (h.get("CreatedBy") or ""))
    floor = base + python + venv
    assert image.attrs["Size"] <= 1.1 * floor, (image.attrs["Size"], floor)


def test_lock_pins_the_nvidia_wheels_too(
    cuda_image: dict[str, Any], base_image: str, cuda_wheelhouse: Path
) -> None:
    """pip resolved nvidia-nvjitlink and cuda-bindings unpinned beside a CUDA 13.0 torch:
    the lock, read from the built image, pins every one of them, with wheel hashes."""
    lock_path = Path(cuda_image["cwd"]) / "cuda.lock.json"
    locked = cli(
        "lock", "gpu-h200", "--base-image", base_image, "--wheelhouse", str(cuda_wheelhouse),
        *SETS, "--image", cuda_image["image_id"], "-o", str(lock_path), cwd=cuda_image["cwd"],
    )  # fmt: skip
    assert locked.returncode == 0, locked.stderr[-3000:]
    pins = {p["name"].lower(): p for p in json.loads(lock_path.read_text())["python"]}
    nvidia = [name for name in pins if name.startswith(("nvidia-", "cuda-"))]
    assert {"nvidia-nvjitlink", "cuda-bindings", "nvidia-cudnn-cu13"} <= set(nvidia), nvidia
    assert all(pins[name]["version"] and pins[name].get("sha256") for name in nvidia)
