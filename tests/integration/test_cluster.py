"""From one machine to a cluster, on real parts: N containers as N nodes of one DDP job
(``aibuild run --nodes``), the sbatch script on a real 2-node Slurm (``scripts/slurm-local.sh``,
started by ``make engine``) with the Docker runtime, the Compose file read by a real
Compose, and the Kubernetes Indexed Job's pods played by containers that must meet.

Every run is tiny (mlp, one epoch of the bundled digits). Each test removes the
containers, networks and tags it made (they carry its ``ai.aibuild.test`` label or its
unique name); the shared cpu image stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

TEST_LABEL = "ai.aibuild.test"  # conftest's docker_cleanup removes containers carrying it
SETUP_HINT = "run `make engine` (scripts/test-env.sh) first"
TINY = ("--model", "mlp", "--epochs", "1")  # 12 steps a rank over two ranks
LONG = ("--model", "cnn", "--epochs", "500")  # minutes: long enough to be stopped


# --------------------------------------------------------------------------- helpers


def run_aibuild(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _containers(client: docker.DockerClient, filters: dict[str, str]) -> list[str]:
    """Names of the containers that match (one list call: none is inspected, so one that
    goes meanwhile cannot fail the call)."""
    return [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters=filters)]


def labelled(client: docker.DockerClient, label: str) -> tuple[list[str], list[str]]:
    """(containers, networks) that carry ``ai.aibuild.test=<label>``."""
    filters = {"label": f"{TEST_LABEL}={label}"}
    networks = [n["Name"] for n in client.api.networks(filters=filters)]
    return _containers(client, filters), networks


def named(client: docker.DockerClient, prefix: str) -> list[str]:
    return [n for n in _containers(client, {"name": prefix}) if n.startswith(prefix)]


@pytest.fixture
def network_cleanup(docker_client: docker.DockerClient, unique_name: str) -> Iterator[None]:
    """Networks with this test's label go at teardown (containers: docker_cleanup)."""
    yield
    for network in docker_client.networks.list(filters={"label": f"{TEST_LABEL}={unique_name}"}):
        for container in network.attrs.get("Containers") or {}:
            docker_client.api.remove_container(container, force=True)
        network.remove()


@pytest.fixture(scope="module")
def cluster_image(
    cpu_image: str, docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The cpu image under a tag of this module's own (a reference that other sessions'
    builds cannot move), untagged at the end."""
    tag = f"aibuild-test/cluster:{tmp_path_factory.getbasetemp().name.replace('_', '-')}"
    repository, _, name = tag.partition(":")
    docker_client.images.get(cpu_image).tag(repository, name)
    yield tag
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.images.remove(tag)


def train_summary(output: Path) -> dict[str, Any]:
    summary = json.loads((output / "summary.json").read_text())
    steps = [
        json.loads(line)["step"]
        for line in (output / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "train"
    ]
    # one writer (rank 0): each logged step once, not once per rank
    assert steps and steps == sorted(set(steps)), steps
    return summary


def group_ranks(lines: list[str], node_prefix: Callable[[int], str]) -> dict[int, int]:
    """Node -> the group rank torchrun's rendezvous gave it (LOGLEVEL=INFO prints it)."""
    ranks = {}
    for node in (0, 1):
        mine = [ln for ln in lines if ln.startswith(node_prefix(node))]
        found = [int(m[1]) for ln in mine if (m := re.search(r"\bgroup_rank=(\d+)", ln))]
        sizes = {m[1] for ln in mine if (m := re.search(r"\bgroup_world_size=(\d+)", ln))}
        assert len(found) == 1 and sizes == {"2"}, (node, found, sizes)
        ranks[node] = found[0]
    return ranks


# --------------------------------------------------------------------------- aibuild run --nodes


@dataclass(frozen=True)
class NodeJob:
    """One `aibuild run --nodes 2` of this test: its image, engine, label (also the job's
    name) and directory."""

    image: str
    client: docker.DockerClient
    label: str
    directory: Path

    def argv(self, *trainer: str) -> list[str]:
        return [
            "run",
            self.image,
            "--nodes",
            "2",
            "--nproc-per-node",
            "1",
            "--name",
            self.label,
            "--label",
            f"{TEST_LABEL}={self.label}",
            "--output",
            str(self.directory / "out"),
            "-e",
            "LOGLEVEL=INFO",
            "--",
            *trainer,
        ]

    def leftovers(self) -> tuple[list[str], list[str]]:
        return labelled(self.client, self.label)

    def start_long(self) -> tuple[subprocess.Popen[str], Path]:
        """Start a long job; return once both nodes train."""
        log = self.directory / "aibuild.log"
        with log.open("w") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aibuild", *self.argv(*LONG)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )
        wait_for(
            "both nodes to train",
            lambda: (
                proc.poll() is None
                and re.search(r"\[node 0\] \[rank0\]: epoch \d+/500 step", log.read_text())
            ),
        )
        assert len(self.leftovers()[0]) == 2
        return proc, log


@pytest.fixture
def node_job(
    cluster_image: str,
    docker_client: docker.DockerClient,
    docker_cleanup: Any,
    network_cleanup: None,
    unique_name: str,
    tmp_path: Path,
) -> NodeJob:
    return NodeJob(cluster_image, docker_client, unique_name, tmp_path)


def test_two_containers_train_one_ddp_job(node_job: NodeJob) -> None:
    result = run_aibuild(*node_job.argv(*TINY), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    node_lines = [ln for ln in lines if not ln.startswith("aibuild: ")]
    assert all(re.match(r"\[node [01]\] ", ln) for ln in node_lines), node_lines[:20]
    # both nodes met: node i got group rank i (their host names sort in order)
    assert group_ranks(node_lines, lambda n: f"[node {n}] ") == {0: 0, 1: 1}
    # both ranks trained (the sampler split the data: 12 steps, not 24), rank 0 alone wrote
    out = node_job.directory / "out"
    summary = train_summary(out)
    assert summary["world_size"] == 2 and summary["steps"] == 12
    trainer_lines = [ln for ln in node_lines if "]: " in ln and "[rank" in ln]
    assert trainer_lines and all(ln.startswith("[node 0] [rank0]: ") for ln in trainer_lines)
    assert sum("data: mnist from" in ln for ln in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "model.pt",
        "summary.json",
    ]
    assert node_job.leftovers() == ([], [])


def test_killing_one_node_ends_the_job(node_job: NodeJob) -> None:
    proc, log = node_job.start_long()
    node_job.client.containers.get(f"{node_job.label}-node1").kill()
    started = time.monotonic()
    assert proc.wait(timeout=60) == 137, log.read_text()[-3000:]  # the killed node's code
    assert time.monotonic() - started < 30
    assert "node 1 exited with 137; stopping the job" in log.read_text()
    assert node_job.leftovers() == ([], [])


def test_sigterm_to_aibuild_stops_every_node(node_job: NodeJob) -> None:
    proc, log = node_job.start_long()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, log.read_text()[-3000:]  # 128 + SIGTERM, as aibuild run
    assert "stopping 2 node(s)" in log.read_text()
    assert "Traceback" not in log.read_text()  # torchrun's shutdown tracebacks are not shown
    assert node_job.leftovers() == ([], [])
    # the nodes had their grace period: rank 0 saved a checkpoint on the way out
    assert list((node_job.directory / "out" / "checkpoints").glob("ckpt-*.pt"))


# --------------------------------------------------------------------------- Slurm


@pytest.fixture(scope="module")
def slurm(test_env: Any) -> int:
    nodes = int(test_env.require("AIBUILD_TEST_SLURM_NODES"))
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if "is UP" not in ping.stdout or nodes < 2:
        pytest.fail(
            f"no 2-node Slurm here (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()}, "
            f"{nodes} node(s)): {SETUP_HINT}",
            pytrace=False,
        )
    return nodes


def slurm_export(image: str, tmp_path: Path, *extra: str) -> Path:
    script = tmp_path / "job.sbatch"
    result = run_aibuild(
        "export",
        "slurm",
        "cpu",
        "--image",
        image,
        "--nodes",
        "2",
        "--runtime",
        "docker",
        "-f",
        str(script),
        *extra,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return script


def test_slurm_job_trains_on_two_nodes(
    slurm: int, cluster_image: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    script = slurm_export(
        cluster_image, tmp_path, "--output", str(out), "-e", "LOGLEVEL=INFO", "--", *TINY
    )
    result = subprocess.run(
        ["sbatch", "--wait", "--parsable", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    job_id = result.stdout.strip().split(";")[0]
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert result.returncode == 0, log[-5000:] + result.stderr
    # srun --label: every line of node i starts "i: "; both met in one rendezvous
    ranks = group_ranks(log.splitlines(), lambda n: f"{n}: ")
    assert sorted(ranks.values()) == [0, 1]
    assert re.search(rf"rendezvous at \S+:{29500 + int(job_id) % 1000}", log)
    summary = train_summary(out)
    assert summary["world_size"] == 2 and summary["steps"] == 12
    assert named(docker_client, f"aibuild-{job_id}-") == []


def test_slurm_cancel_leaves_no_container(
    slurm: int, cluster_image: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    result = run_aibuild(
        "submit",
        "slurm",
        "cpu",
        "--image",
        cluster_image,
        "--nodes",
        "2",
        "--runtime",
        "docker",
        "--",
        *LONG,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    job_id = re.fullmatch(r"submitted batch job (\d+)\n", result.stdout)[1]  # type: ignore[index]
    prefix = f"aibuild-{job_id}-"
    try:
        wait_for(
            "both containers to train",
            lambda: (
                len(named(docker_client, prefix)) == 2
                and "epoch 1/500" in (tmp_path / f"slurm-{job_id}.out").read_text()
            ),
        )
    finally:
        subprocess.run(["scancel", job_id], check=True)
    cancelled = time.monotonic()
    wait_for("the containers to go", lambda: not named(docker_client, prefix), timeout=60)
    gone_after = time.monotonic() - cancelled
    # scancel signals the docker client, which forwards it; --init runs the signal's default
    # action where PID 1 would not; --rm lets the engine remove the exited container
    assert gone_after < 30, gone_after
    wait_for("the job to end", lambda: job_id not in _squeue(), timeout=60)


def _squeue() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout


def test_submit_wait_exits_with_the_job_code(
    slurm: int, cluster_image: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A job whose trainer refuses its flags fails on both nodes; `--wait` returns its code."""
    result = run_aibuild(
        "submit", "slurm", "cpu", "--image", cluster_image, "--nodes", "2",
        "--runtime", "docker", "--wait", "--", "--epochs", "0",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    job_id = re.fullmatch(r"submitted batch job (\d+)\n", result.stdout)[1]  # type: ignore[index]
    # the job's code: 1 from the first node to fail, or 143 when srun's --kill-on-bad-exit
    # stopped the other one while it was failing too
    assert result.returncode in (1, 143), result.stderr
    assert f"job {job_id} ended with exit code {result.returncode}" in result.stderr
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "--epochs: error: must be >= 1, not 0" in log, log[-3000:]
    assert named(docker_client, f"aibuild-{job_id}-") == []


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ("apptainer", "the apptainer runtime is not installed here (apptainer is not on PATH)"),
        ("singularity", "the singularity runtime is not installed here"),
        ("pyxis", "srun has no --container-image: the pyxis plugin is not installed"),
    ],
)
def test_submit_refuses_a_runtime_that_is_not_installed(
    slurm: int, runtime: str, message: str, tmp_path: Path
) -> None:
    assert shutil.which(runtime) is None
    before = _squeue()
    result = run_aibuild(
        "submit", "slurm", "cpu", "--nodes", "2", "--runtime", runtime, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if not ln.startswith("aibuild: image")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert result.stdout == "" and _squeue() == before


# --------------------------------------------------------------------------- Compose


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The real Compose: the v2 plugin where present, else Debian's docker-compose."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(f"neither `docker compose` nor docker-compose is installed: {SETUP_HINT}")


@pytest.mark.parametrize(
    ("profile", "gpus", "devices"),
    [
        ("gpu-h100x8", None, [{"driver": "nvidia", "count": 8, "capabilities": ["gpu"]}]),
        (
            "gpu-h100x8",
            "device=1,3",
            [{"driver": "nvidia", "device_ids": ["1", "3"], "capabilities": ["gpu"]}],
        ),
        ("cpu", None, None),
    ],
)
def test_compose_reads_the_file(
    compose: list[str], profile: str, gpus: str | None, devices: Any, tmp_path: Path
) -> None:
    path = tmp_path / "compose.yaml"
    argv = ["export", "compose", profile, "-f", str(path), "--output", str(tmp_path / "out")]
    argv += ["--data", str(tmp_path), "-e", "NOTE=$HOME", *(["--gpus", gpus] if gpus else [])]
    result = run_aibuild(*argv, "--", "--epochs", "1", timeout=60)
    assert result.returncode == 0, result.stderr
    read = subprocess.run(
        [*compose, "-f", str(path), "config"], capture_output=True, text=True, check=False
    )
    assert read.returncode == 0, read.stderr
    assert "variable is not set" not in read.stderr, read.stderr  # no ${...} interpolated
    train = yaml.safe_load(read.stdout)["services"]["train"]
    reservations = train.get("deploy", {}).get("resources", {}).get("reservations", {})
    got = reservations.get("devices")
    if devices is None:
        assert got is None
    else:
        assert [{k: d[k] for k in sorted(d)} for d in got] == devices
    assert train["shm_size"] in ("64g", "2g", 68719476736, 2147483648)
    # memlock -1 is kept unless this engine, with the image there to try, refuses it
    # (docker compose up would fail here); the file says which
    stack = {"stack": {"soft": 67108864, "hard": 67108864}}
    if "memlock" in train["ulimits"]:
        assert train["ulimits"] == {"memlock": {"soft": -1, "hard": -1}, **stack}
    else:
        assert train["ulimits"] == stack
        assert "No memlock ulimit: the engine here cannot raise it" in path.read_text()
    volumes = {v["target"]: v for v in train["volumes"]}
    assert volumes["/data"]["source"] == str(tmp_path) and volumes["/data"]["read_only"] is True
    assert volumes["/output"]["source"] == str(tmp_path / "out")
    assert train["environment"]["NOTE"] in ("$HOME", "$$HOME")  # config re-escapes on output
    assert train["user"] == f"{os.getuid()}:{os.getgid()}"


# --------------------------------------------------------------------------- Kubernetes


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` and ``$$`` as the kubelet expands them in env values and args: one pass,
    ``$$`` is a literal ``$``, an unknown ``$(VAR)`` stays as written."""
    return re.sub(
        r"\$\$|\$\((\w+)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        text,
    )


def test_k8s_indexed_pods_meet_in_containers(
    cluster_image: str,
    docker_client: docker.DockerClient,
    docker_cleanup: Any,
    network_cleanup: None,
    unique_name: str,
) -> None:
    """The Indexed Job's pods, played by containers named and resolvable as Kubernetes names
    them (``<job>-<i>``, ``<job>-<i>.<service>``), with the pod's environment and the
    kubelet's ``$(VAR)`` expansion: they must rendezvous and train."""
    name = "k" + unique_name.removeprefix("aibuild-test-")
    result = run_aibuild(
        "export", "k8s", "cpu", "--image", cluster_image, "--nodes", "2", "--name", name,
        "--", *TINY, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    service, job = yaml.safe_load_all(result.stdout)
    template = job["spec"]["template"]
    (container,) = template["spec"]["containers"]
    label = {TEST_LABEL: unique_name}
    network = docker_client.networks.create(unique_name, labels=label)
    started = []
    for index in range(job["spec"]["completions"]):
        env = {"NODE_RANK": str(index)}  # the completion index annotation, by fieldRef
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = kubelet_expand(item["value"], env)
        argv = [kubelet_expand(a, env) for a in container["command"] + container["args"]]
        hostname = f"{name}-{index}"
        created = docker_client.containers.create(
            container["image"],
            entrypoint=argv[:1],
            command=argv[1:],
            environment=env,
            hostname=hostname,
            name=hostname,
            labels=label,
            user=str(template["spec"]["securityContext"]["runAsUser"]),
            shm_size="256m",
        )
        docker_cleanup.container(created)
        network.connect(created, aliases=[f"{hostname}.{template['spec']['subdomain']}"])
        started.append(created)
    # pod 1 first: it must wait for pod 0's name to resolve and its store to answer
    started[1].start()
    time.sleep(3)
    started[0].start()
    codes = [c.wait(timeout=240)["StatusCode"] for c in started]
    logs = [c.logs().decode() for c in started]
    assert codes == [0, 0], logs
    assert "[rank0]: completed: 12 steps" in logs[0], logs[0]
    assert service["metadata"]["name"] == template["spec"]["subdomain"]
