"""`aibuild image` through the real engine: the cpu profile from the bootstrapped base
and the local wheelhouse, its build record, a failing step, an unreachable engine,
and `aibuild wheelhouse`.

The cpu image is built once per session by the shared ``cpu_build`` fixture (conftest.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import docker

CPU_SETS = ("--set", "software.torch=2.13.0", "--set", "software.python=3.11")
CPU_REF = "aibuild:cpu-torch2.13.0-cpu"


def record_of(result: subprocess.CompletedProcess[str], cwd: Path) -> dict[str, Any]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("build record: ")]
    assert lines, result.stdout
    path = cwd / lines[-1].removeprefix("build record: ")
    assert path.is_file()
    assert path.parent == cwd / ".aibuild" / "builds"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_cpu_image_builds_and_is_tagged(cpu_build: Any, docker_client: docker.DockerClient) -> None:
    assert f"tagged {CPU_REF}" in cpu_build.result.stdout
    assert "Step 1/" in cpu_build.result.stderr  # plain progress in a pipe
    assert "Traceback" not in cpu_build.result.stderr
    image = docker_client.images.get(CPU_REF)
    labels = image.labels
    assert labels["ai.aibuild.profile"] == "cpu"
    assert labels["ai.aibuild.torch"] == "2.13.0"
    assert image.attrs["Config"]["User"] in ("1000:1000", "aibuild", "1000")
    assert image.attrs["Config"]["Entrypoint"] == ["aibuild", "train"]
    env = dict(e.split("=", 1) for e in image.attrs["Config"]["Env"])
    assert env["AIBUILD_PROFILE"] == "/etc/aibuild/profile.yaml"
    # proxy build args and the wheelhouse stay out of the image
    assert not any(k.lower().endswith("_proxy") for k in env)


def test_build_record(
    cpu_build: Any,
    base_image: str,
    docker_client: docker.DockerClient,
) -> None:
    record = record_of(cpu_build.result, cpu_build.directory)
    image = docker_client.images.get(CPU_REF)
    assert record["image_id"] == image.id
    assert CPU_REF in record["tags"]
    assert record["plan"]["profile_name"] == "cpu"
    assert record["plan"]["torch"] == "2.13.0"
    assert record["base_image"]["ref"] == base_image
    assert record["base_image"]["id"] == docker_client.images.get(base_image).id
    assert "torch==2.13.0+cpu" in record["python_packages"]
    assert any(p.lower().startswith("click==") for p in record["python_packages"])
    assert any(p.startswith("python3.11=") for p in record["os_packages"])
    assert any(p.startswith("dpkg=") for p in record["os_packages"])
    assert record["duration_s"] > 0
    steps = record["steps"]
    assert steps[0]["instruction"].startswith("FROM ")
    assert steps[-1]["index"] == steps[-1]["total"] == len(steps)
    assert record["cache_hits"] == sum(1 for s in steps if s["cached"])
    assert any(s["installs_packages"] for s in steps)


def test_wheelhouse_stays_out_of_the_image(
    cpu_build: Any, docker_client: docker.DockerClient
) -> None:
    out = docker_client.containers.run(
        CPU_REF,
        entrypoint=["sh", "-c"],
        command=["ls /tmp/aibuild-build 2>&1; ls /opt/venv/bin/python"],
        remove=True,
    ).decode()
    assert "No such file or directory" in out
    assert "/opt/venv/bin/python" in out


def test_failing_run_step_reports_step_and_log_tail(
    cpu_build: Any,
    build_cpu: Any,
) -> None:
    result = build_cpu(
        cpu_build.directory,
        "--set",
        "software.pip=[aibuild-no-such-package]",
        "--set",
        "image.name=aibuild-test/failing",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    err = result.stderr
    assert "failed: The command" in err and "returned a non-zero code" in err
    assert "failing step: RUN pip install" in err
    assert "last lines of its output:" in err
    tail = err[err.index("last lines of its output:") :]
    assert "aibuild-no-such-package" in tail
    assert len(tail.splitlines()) <= 22


def test_unreachable_engine_is_a_clear_error(tmp_path: Path, aibuild_cli: Any) -> None:
    result = aibuild_cli(
        "image", "cpu", *CPU_SETS, cwd=tmp_path, env={"DOCKER_HOST": "tcp://127.0.0.1:9"}
    )
    assert result.returncode == 1
    assert "cannot reach the Docker engine at tcp://127.0.0.1:9 (from DOCKER_HOST)" in (
        result.stderr
    )
    assert "Start a Docker engine" in result.stderr
    assert "Traceback" not in result.stderr


def test_wheelhouse_downloads_what_the_image_needs(tmp_path: Path, aibuild_cli: Any) -> None:
    out = tmp_path / "wheels"
    # The host's pip finds the local torch wheel through its configured find-links.
    result = aibuild_cli(
        "wheelhouse",
        "cpu",
        "--set",
        "software.torch=2.13.0",
        "-o",
        str(out),
        env={"PIP_RETRIES": "1", "PIP_DEFAULT_TIMEOUT": "20"},
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    names = {p.name.lower() for p in out.glob("*.whl")}
    assert "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" in names
    for prefix in ("click-", "pyyaml-", "packaging-", "filelock-", "sympy-", "uv-0.9.30-"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    assert all(("cp311" in n or "py3-none-" in n) for n in names), names  # the image's Python
    assert f"{len(names)} wheels in {out}" in result.stdout


def test_wheelhouse_failure_is_clear(tmp_path: Path, aibuild_cli: Any) -> None:
    result = aibuild_cli(
        "wheelhouse",
        "cpu",
        "--set",
        "software.torch=2.13.0",
        "--set",
        "software.pip=[aibuild-no-such-package]",
        "-o",
        str(tmp_path / "w"),
        env={"PIP_RETRIES": "1", "PIP_DEFAULT_TIMEOUT": "20"},
        timeout=900,
    )
    assert result.returncode == 1
    assert "pip download failed" in result.stderr
    assert "aibuild-no-such-package" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unpullable_base_is_named_with_the_offline_way(tmp_path: Path, aibuild_cli: Any) -> None:
    result = aibuild_cli(
        "image", "cpu", "--base-image", "registry.invalid/nothing:1", *CPU_SETS, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "base image registry.invalid/nothing:1" in lines[0]
    assert "--base-image" in lines[0] and "--wheelhouse" in lines[0]
