"""The test environment itself: engine, base image, fake NVIDIA hook, the engine
without it, wheelhouse, registries. When one of these fails, fix the environment
(scripts/test-env.sh) before reading anything into other integration failures."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

GPU_REFUSAL = 'could not select device driver "" with capabilities: [[gpu]]'


def run_output(client: docker.DockerClient, image: str, command: str, **kwargs: Any) -> str:
    output = client.containers.run(image, ["bash", "-c", command], remove=True, **kwargs)
    return output.decode() if isinstance(output, bytes) else str(output)


def tiny_image(client: docker.DockerClient, ref: str) -> str:
    """Import a one-file image (a few hundred bytes) as ref; returns its id."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = ref.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repository, _, tag = ref.rpartition(":")
    client.api.import_image_from_data(buf.getvalue(), repository=repository, tag=tag)
    return str(client.images.get(ref).id)


# ------------------------------------------------------------------------ engine


def test_engine_answers(docker_client: docker.DockerClient) -> None:
    assert docker_client.ping() is True
    version = docker_client.version()
    api = tuple(int(p) for p in version["ApiVersion"].split("."))
    # DeviceRequests (--gpus) arrived in API 1.40.
    assert api >= (1, 40), version


def test_base_image_is_offline_bookworm_without_python(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    image = docker_client.images.get(base_image)
    assert image.attrs["Config"]["Cmd"] == ["/bin/bash"]
    assert any(e.startswith("PATH=") for e in image.attrs["Config"]["Env"])
    out = run_output(
        docker_client,
        base_image,
        ". /etc/os-release; echo $ID $VERSION_ID; command -v python3 || echo no-python3",
    )
    assert out.split() == ["debian", "12", "no-python3"]


def test_containers_reach_debian_mirror(
    docker_client: docker.DockerClient, base_image: str, build_network: str
) -> None:
    out = run_output(
        docker_client,
        base_image,
        "exec 3<>/dev/tcp/deb.debian.org/80 && echo reached",
        network_mode=build_network,
    )
    assert out.strip() == "reached"


def test_classic_build_reaches_debian_mirror(
    docker_client: docker.DockerClient, base_image: str, build_network: str, docker_cleanup: Any
) -> None:
    # docker-py's build API is the classic builder: the network a build's RUN
    # steps get is the build's network_mode.
    dockerfile = (
        f"FROM {base_image}\nRUN bash -c 'exec 3<>/dev/tcp/deb.debian.org/80' && echo reached\n"
    )
    image, logs = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()),
        network_mode=build_network,
        rm=True,
        forcerm=True,
        nocache=True,
        labels=docker_cleanup.label,
    )
    docker_cleanup.image(image.id)
    assert any("reached" in str(chunk.get("stream", "")) for chunk in logs)


# -------------------------------------------------------------------- GPU (fake)


@pytest.mark.parametrize(
    ("request_kwargs", "visible", "capabilities"),
    [
        pytest.param({"count": -1, "capabilities": [["gpu"]]}, "all", None, id="all"),
        pytest.param({"count": 2, "capabilities": [["gpu"]]}, "0,1", None, id="count-2"),
        pytest.param(
            {"device_ids": ["0", "1"], "capabilities": [["gpu"]]}, "0,1", None, id="device=0,1"
        ),
        pytest.param(
            {"count": -1, "capabilities": [["gpu", "compute", "utility"]]},
            "all",
            "compute,utility",
            id="all-compute-utility",
        ),
    ],
)
def test_gpu_request_reaches_container_through_hook(
    docker_client: docker.DockerClient,
    base_image: str,
    docker_cleanup: Any,
    hook_calls: Callable[[str], list[dict[str, Any]]],
    request_kwargs: dict[str, Any],
    visible: str,
    capabilities: str | None,
) -> None:
    container = docker_cleanup.container(
        docker_client.containers.run(
            base_image,
            ["bash", "-c", "env | grep ^NVIDIA_ | sort"],
            device_requests=[docker.types.DeviceRequest(**request_kwargs)],
            labels=docker_cleanup.label,
            detach=True,
        )
    )
    assert container.wait(timeout=60)["StatusCode"] == 0
    env = dict(line.split("=", 1) for line in container.logs().decode().split())
    assert env.get("NVIDIA_VISIBLE_DEVICES") == visible
    assert env.get("NVIDIA_DRIVER_CAPABILITIES") == capabilities

    calls = hook_calls(container.id)
    assert len(calls) == 1, f"the fake hook logged {calls} for {container.id}"
    assert calls[0]["args"] == ["prestart"]
    assert calls[0]["NVIDIA_VISIBLE_DEVICES"] == visible
    assert calls[0]["NVIDIA_DRIVER_CAPABILITIES"] == capabilities
    assert "error" not in calls[0]


def test_no_gpu_request_does_not_call_hook(
    docker_client: docker.DockerClient,
    base_image: str,
    docker_cleanup: Any,
    hook_calls: Callable[[str], list[dict[str, Any]]],
) -> None:
    container = docker_cleanup.container(
        docker_client.containers.run(base_image, ["true"], labels=docker_cleanup.label, detach=True)
    )
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert hook_calls(container.id) == []


def test_engine_without_hook_refuses_gpu_request(
    nohook_docker_client: docker.DockerClient, base_image: str, unique_name: str
) -> None:
    # The base image is loaded into this engine too (scripts/test-env.sh).
    nohook_docker_client.images.get(base_image)
    try:
        with pytest.raises(docker.errors.APIError) as excinfo:
            nohook_docker_client.containers.run(
                base_image,
                ["true"],
                name=unique_name,
                device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
                detach=True,
            )
        assert GPU_REFUSAL in str(excinfo.value)
    finally:
        # The engine creates the container, then fails to start it: what the
        # code under test must clean up. Here the test cleans up after itself.
        for c in nohook_docker_client.containers.list(all=True, filters={"name": unique_name}):
            c.remove(force=True)


def test_engine_without_hook_runs_plain_containers(
    nohook_docker_client: docker.DockerClient, base_image: str
) -> None:
    out = nohook_docker_client.containers.run(base_image, ["echo", "ok"], remove=True)
    assert out.decode().strip() == "ok"


# -------------------------------------------------------------------- wheelhouse


def test_wheelhouse_resolves_torch_and_runtime_offline(wheelhouse: Path, tmp_path: Path) -> None:
    """Everything the image installs resolves from the wheelhouse alone, for the
    image's Python (CPython 3.11 on x86_64 glibc), and torch is the CPU build."""
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
            "--no-index", "--find-links", str(wheelhouse), "--ignore-installed",
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--abi", "cp311", "--platform", "manylinux_2_28_x86_64",
            "--target", str(tmp_path / "target"),
            "torch==2.13.0", "click", "pyyaml", "packaging", "jinja2", "numpy",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    installed = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in json.loads(result.stdout)["install"]
    }
    assert installed["torch"] == "2.13.0+cpu"
    assert {"sympy", "networkx", "filelock", "fsspec", "typing-extensions"} <= set(installed)


# --------------------------------------------------------------------- registries


def test_registry_accepts_push(
    docker_client: docker.DockerClient, registry: Any, docker_cleanup: Any, unique_name: str
) -> None:
    ref = f"{registry.repo('env-check/' + unique_name)}:1"
    docker_cleanup.image(tiny_image(docker_client, ref))
    events = list(docker_client.images.push(ref, stream=True, decode=True))
    assert not [e for e in events if "error" in e], events
    digest = next(e["aux"]["Digest"] for e in events if "Digest" in e.get("aux", {}))
    assert registry.tags(f"env-check/{unique_name}") == ["1"]
    assert registry.manifest_digest(f"env-check/{unique_name}", "1") == digest


def test_auth_registry_requires_credentials(
    docker_client: docker.DockerClient, auth_registry: Any, docker_cleanup: Any, unique_name: str
) -> None:
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(f"http://{auth_registry.host}/v2/", timeout=10)
    excinfo.value.close()
    assert excinfo.value.code == 401

    ref = f"{auth_registry.repo('env-check/' + unique_name)}:1"
    docker_cleanup.image(tiny_image(docker_client, ref))
    wrong = {"username": auth_registry.username, "password": "wrong"}
    events = list(docker_client.images.push(ref, stream=True, decode=True, auth_config=wrong))
    assert any("unauthorized" in e.get("error", "") for e in events), events

    events = list(
        docker_client.images.push(
            ref, stream=True, decode=True, auth_config=auth_registry.auth_config
        )
    )
    assert not [e for e in events if "error" in e], events
    assert auth_registry.tags(f"env-check/{unique_name}") == ["1"]


def test_registry_stop_and_restart_keeps_storage(
    docker_client: docker.DockerClient,
    disposable_registry: Any,
    registry_control: Any,
    docker_cleanup: Any,
    unique_name: str,
) -> None:
    reg = disposable_registry
    ref = f"{reg.repo(unique_name)}:1"
    docker_cleanup.image(tiny_image(docker_client, ref))
    assert not [e for e in docker_client.images.push(ref, stream=True, decode=True) if "error" in e]

    registry_control.stop(reg.name)
    assert not registry_control.is_running(reg.name)
    events = list(docker_client.images.push(ref, stream=True, decode=True))
    assert any("error" in e for e in events), events

    registry_control.restart(reg.name)
    assert registry_control.is_running(reg.name)
    assert reg.tags(unique_name) == ["1"]  # storage survived the restart
    deadline = time.monotonic() + 30
    while True:  # the engine may hold a failed connection for a moment
        events = list(docker_client.images.push(ref, stream=True, decode=True))
        if not [e for e in events if "error" in e] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not [e for e in events if "error" in e], events


# ------------------------------------------------------------------------ tools


def test_hadolint_binary_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import shutil; print(shutil.which('hadolint') or '')"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    hadolint = result.stdout.strip() or str(Path(sys.executable).parent / "hadolint")
    version = subprocess.run(
        [hadolint, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert "Haskell Dockerfile Linter" in version.stdout
