"""`aibuild run` through the real engine: torch in the built cpu image, the trainer's
output owned by the caller, exit codes, mounts and limits, Ctrl-C and failed starts
leaving no container behind.

The cpu image comes from test_build's command (built once; the engine's cache makes
a second `aibuild image` of the same profile a no-op rebuild).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.conftest import default_signals

CPU_SETS = ("--set", "software.torch=2.13.0", "--set", "software.python=3.11")
CPU_REF = "aibuild:cpu-torch2.13.0-cpu"


def aibuild(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def leftovers(client: docker.DockerClient, label: dict[str, str]) -> list[str]:
    key, value = next(iter(label.items()))
    return [c.id for c in client.containers.list(all=True, filters={"label": f"{key}={value}"})]


def label_args(label: dict[str, str]) -> list[str]:
    key, value = next(iter(label.items()))
    return ["--label", f"{key}={value}"]


def test_torch_works_in_the_profile_image(cpu_image: str) -> None:
    result = aibuild(
        "run",
        "cpu",
        *CPU_SETS,
        "--",
        "python",
        "-c",
        "import torch; print('torch', torch.__version__, torch.ones(3).sum().item())",
    )
    assert result.returncode == 0, result.stderr
    assert "torch 2.13.0+cpu 3.0" in result.stdout


def test_run_by_image_id_with_exit_code(cpu_image: str, docker_cleanup: Any) -> None:
    label = docker_cleanup.label
    result = aibuild(
        "run", cpu_image, *label_args(label), "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert "err" in result.stderr
    assert leftovers(docker_cleanup.client, label) == []


def test_the_library_writes_only_to_the_console_it_is_given(
    base_image: str, docker_cleanup: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """``run_image``, the library under `aibuild run`, writes the container's output to the
    Console's streams and says what it did through its Log: nothing goes to the process's
    own stdout or stderr."""
    from aibuild.run.config import ContainerOptions
    from aibuild.run.container import run_image
    from aibuild.run.lifecycle import Console

    out, err, said = io.BytesIO(), io.BytesIO(), []
    console = Console(out, err, said.append)
    script = ("sh", "-c", "echo out; echo err >&2; exit 3")
    options = ContainerOptions(args=script, labels=tuple(docker_cleanup.label.items()))
    client = docker_cleanup.client
    assert run_image(base_image, [], options, console, client=client) == 3
    assert (out.getvalue(), err.getvalue()) == (b"out\n", b"err\n")
    detached = replace(options, args=("true",), detach=True)
    assert run_image(base_image, [], detached, console, client=client) == 0
    assert [s for s in said if s.startswith("aibuild: started ")], said
    assert len(out.getvalue().splitlines()) == 2  # the detached container's id
    deadline = time.monotonic() + 30  # `true` exits at once and the engine removes it
    while leftovers(client, docker_cleanup.label) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(client, docker_cleanup.label) == []
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_training_defaults_inside(cpu_image: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("x")
    script = (
        "echo stack=$(ulimit -s); "
        "echo shm=$(df -k /dev/shm | tail -1 | tr -s ' ' | cut -d' ' -f2); "
        "echo data=$AIBUILD_DATA; cat /data/x.txt; echo; "
        "touch /data/y 2>/dev/null && echo writable || echo read-only; echo id=$(id -u):$(id -g)"
    )
    result = aibuild("run", cpu_image, "--data", str(data), "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "stack=65536" in out  # 64 MiB, in KiB
    assert "shm=2097152" in out  # the cpu profile's run.shm_size 2g
    assert "data=/data" in out
    assert "\nx\n" in out
    assert "read-only" in out
    assert "id=1000:1000" in out  # the image's user when no --output is given


def test_default_entrypoint_trains_into_output_owned_by_caller(
    cpu_image: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = aibuild(
        "run",
        "cpu",
        *CPU_SETS,
        "--output",
        str(out),
        "--",
        "--epochs",
        "1",
        "--max-steps",
        "5",
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written, "the trainer wrote nothing to --output"
    assert (out / "summary.json").is_file()
    assert (out / "metrics.jsonl").is_file()
    assert list(out.rglob("*.pt")), "no checkpoint"
    json.loads((out / "summary.json").read_text())
    for path in [out, *out.rglob("*")]:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), path


def test_nproc_per_node_runs_torchrun(cpu_image: str, tmp_path: Path) -> None:
    result = aibuild(
        "run",
        "cpu",
        *CPU_SETS,
        "--nproc-per-node",
        "2",
        "--output",
        str(tmp_path / "o"),
        "--",
        "--dry-run",
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "world size 2" in (result.stdout + result.stderr)


def test_image_not_built_names_the_build_command() -> None:
    result = aibuild("run", "cpu", *CPU_SETS, "--set", "image.name=aibuild-test/never-built")
    assert result.returncode == 1
    assert "is not built on this engine" in result.stderr
    assert "aibuild image cpu --set software.torch=2.13.0" in result.stderr
    assert "--set image.name=aibuild-test/never-built" in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_start_leaves_no_container(base_image: str, docker_cleanup: Any) -> None:
    label = docker_cleanup.label
    result = aibuild("run", base_image, *label_args(label), "--", "/no/such/program")
    assert result.returncode == 1
    assert "could not start" in result.stderr
    assert "/no/such/program" in result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(docker_cleanup.client, label) == []


def _start_and_wait_running(
    args: list[str], client: docker.DockerClient, label: dict[str, str]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aibuild", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # stopped with SIGINT: not ignored by inheritance
    )
    key, value = next(iter(label.items()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = client.containers.list(filters={"label": f"{key}={value}", "status": "running"})
        if running:
            time.sleep(1.0)  # let the container's shell install its trap
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the container never ran")


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_stop_signal_sends_sigterm_and_removes_the_container(
    base_image: str, docker_cleanup: Any, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C, a SIGTERM to aibuild, and a closed terminal (SIGHUP) all stop the container
    gracefully and remove it; aibuild exits 128 + the signal."""
    client = docker_cleanup.client
    label = docker_cleanup.label
    script = 'trap "echo got-sigterm; exit 7" TERM; echo ready; while :; do sleep 0.2; done'
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aibuild",
            "run",
            base_image,
            *label_args(label),
            "--grace",
            "20",
            "--",
            "bash",
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # stopped with SIGINT: not ignored by inheritance
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the trap is installed once this arrives
    assert first == "ready\n", (first, proc.stderr.read() if proc.stderr else "")
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "got-sigterm" in out  # SIGTERM reached the container, before any kill
    assert time.monotonic() - started < 15
    assert "stopping container" in err
    assert "Traceback" not in err
    assert leftovers(client, label) == []


def test_ctrl_c_kills_after_the_grace_period(base_image: str, docker_cleanup: Any) -> None:
    client = docker_cleanup.client
    label = docker_cleanup.label
    # PID 1 without a handler ignores SIGTERM: only the kill after the grace ends it.
    proc = _start_and_wait_running(
        [base_image, *label_args(label), "--grace", "2", "--", "sleep", "300"], client, label
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert leftovers(client, label) == []


def test_a_killed_run_leaves_a_container_the_next_run_removes(
    base_image: str, docker_cleanup: Any
) -> None:
    """SIGKILL gives aibuild no chance: the container runs on (as Docker allows), carries
    its owner, and the next `aibuild run` on this host stops and removes it."""
    client = docker_cleanup.client
    label = docker_cleanup.label
    proc = _start_and_wait_running(
        [base_image, *label_args(label), "--", "sleep", "300"], client, label
    )
    proc.kill()
    proc.communicate(timeout=30)  # reaps it and closes its pipes
    left = leftovers(client, label)
    assert len(left) == 1  # still running: nothing could stop it
    owner = client.containers.get(left[0]).labels["ai.aibuild.run.owner"]
    assert owner.split(":")[1] == str(proc.pid)
    again = aibuild("run", base_image, *label_args(label), "--", "true")
    assert again.returncode == 0, again.stderr
    assert f"killed (pid {proc.pid})" in again.stderr
    assert leftovers(client, label) == []


def test_training_without_output_keeps_its_results(cpu_image: str, tmp_path: Path) -> None:
    """No --output: the trainer's results go to ./aibuild-output/<profile>-<time> on the
    host, said before training starts, never into the removed container."""
    result = aibuild("run", cpu_image, "--", "--epochs", "1", "--max-steps", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [ln for ln in result.stderr.splitlines() if "no --output" in ln]
    assert said and "aibuild-output/cpu-" in said[0]
    (out,) = (tmp_path / "aibuild-output").iterdir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    assert (out / "summary.json").stat().st_uid == os.getuid()
