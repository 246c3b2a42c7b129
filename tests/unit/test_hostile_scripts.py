"""Generated job files are safe by construction: arbitrary variable names, values and
trainer arguments go through every generator (Slurm's pyxis, Apptainer and docker
runtimes, Compose, Kubernetes). The Slurm scripts are RUN by bash with fake ``srun``,
``scontrol`` and ``docker`` as the only commands on PATH; the test asserts that the intended
command ran once, that nothing else ran (no "command not found", no file made), and that
every variable and argument arrives byte for byte. Compose's and the kubelet's own
``$`` expansion are applied to their files before the comparison.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from aibuild.errors import ExportError
from aibuild.export.compose import compose_yaml
from aibuild.export.job import ClusterJob, cluster_job
from aibuild.export.k8s import k8s_documents
from aibuild.export.shell import ENV_NAME, HOST_NAMES, HOST_PREFIXES
from aibuild.export.slurm import SlurmOptions, slurm_script
from aibuild.profile.resolve import plan_for

IMAGE = "registry.example.com/team/train@sha256:" + "a" * 64
NASTY = [
    "A;touch pwned;B=2",
    "AIBUILD_NODE",
    "\nAIBUILD_NODE\ntouch pwned\n",
    "$(touch pwned)",
    "`touch pwned`",
    "'; touch pwned; '",
    '"; touch pwned; "',
    "$RDZV_HOST:$RDZV_PORT",
    '"$SLURM_JOB_ID"',
    '"${gpus[@]}"',
    "$(id -u):$(id -g)",
    "\\",
    "$(VAR)",
    "$$(VAR)",
    "${HOME}",
    "\r\n#SBATCH --nodes=999",
]

keys = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(["PATH", "BASH_ENV", "LD_PRELOAD", "SLURM_NTASKS", "_", "A;B", "A B"]),
    st.text(max_size=10),
)
values = st.one_of(st.sampled_from(NASTY), st.text(max_size=30))
trainer_args = st.lists(values, max_size=4).map(lambda rest: ["--set", *rest])
envs = st.lists(st.tuples(keys, values), max_size=4)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _job(env: list[tuple[str, str]], args: list[str], **kwargs: Any) -> ClusterJob | None:
    """The job, or None when aibuild refused it, which it must do for exactly the inputs
    that no generator can carry: a name that is not a variable name, a NUL."""
    bad = any(not ENV_NAME.fullmatch(k) or "\x00" in v for k, v in env) or any(
        "\x00" in a for a in args
    )
    try:
        job = cluster_job(
            plan_for("cpu"), image=IMAGE, nodes=2, env=env, trainer_args=args, **kwargs
        )
    except ExportError as exc:
        assert bad, exc
        assert "\n" not in str(exc)
        event("refused: not a variable name, or a NUL")
        return None
    assert not bad
    event("generated")
    return job


def _host_name(key: str) -> bool:
    return key in HOST_NAMES or key.startswith(HOST_PREFIXES)


# --------------------------------------------------------------------------- Slurm


# It assigns no variable: the job's environment may export any name (`n` included), and
# an assignment to an exported name would change the environment it records.
FAKE_SRUN = """#!/bin/bash
env -0 > "$LOG/srun-env.$(ls "$LOG" | grep -c '^srun-env' || true)"
printf '%s\\0' "$@" > "$LOG/srun-argv.$(ls "$LOG" | grep -c '^srun-argv' || true)"
while [[ $# -gt 0 && $1 != bash ]]; do shift; done
if [[ $# -gt 0 ]]; then exec "$@"; fi
"""
FAKE_DOCKER = """#!/bin/bash
printf '%s\\0' "$@" > "$LOG/docker-argv.$(ls "$LOG" | grep -c '^docker-argv' || true)"
"""
FAKE_SCONTROL = """#!/bin/bash
if [[ $2 == hostnames ]]; then echo node1; else echo "NodeName=$4 NodeAddr=10.0.0.1"; fi
"""
REAL_TOOLS = ("bash", "head", "tr", "sed", "ls", "grep", "env", "id", "cat")


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fakebin")
    for name, text in (("srun", FAKE_SRUN), ("docker", FAKE_DOCKER), ("scontrol", FAKE_SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    (folder / "hostname").write_text("#!/bin/bash\necho node1\n")
    (folder / "hostname").chmod(0o755)
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    return folder


def run_script(script: str, fake_bin: Path, work: Path) -> tuple[Path, str]:
    """Run the sbatch script as sbatch would on a node: the fake tools alone on PATH, in an
    empty folder; (the log folder, stderr). Asserts it succeeded and ran nothing else."""
    if work.exists():
        shutil.rmtree(work)
    log = work / "log"
    log.mkdir(parents=True)
    (work / "job.sbatch").write_text(script)
    env = {
        "PATH": str(fake_bin),
        "LOG": str(log),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURMD_NODENAME": "node1",
        "SLURM_NODEID": "0",
    }
    result = subprocess.run(
        [str(fake_bin / "bash"), "job.sbatch"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "not found" not in result.stderr, result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["job.sbatch", "log"]  # nothing made
    return log, result.stderr


def _zero_split(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\0")[:-1]


def _env_of(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in _zero_split(path))


def _argv_ends_with_trainer(argv: list[str], args: list[str]) -> None:
    assert argv[-len(args) - 3 :] == ["-m", "aibuild", "train", *args]


def _one(log: Path, tool: str) -> list[Path]:
    return sorted(log.glob(f"{tool}-argv.*"))


@SETTINGS
@given(env=envs, args=trainer_args)
@example(env=[("A;touch pwned;B", "2")], args=["--set"])
@example(env=[("K", "x\nAIBUILD_NODE\ntouch pwned\n")], args=["--set", "AIBUILD_NODE"])
def test_pyxis_script_runs_only_srun(
    env: list[tuple[str, str]], args: list[str], fake_bin: Path, tmp_path: Path
) -> None:
    job = _job(env, args)
    if job is None:
        return
    try:
        script = slurm_script(job, SlurmOptions(runtime="pyxis"))
    except ExportError as exc:
        assert any(_host_name(k) for k, _ in env), exc
        return
    assert not any(_host_name(k) for k, _ in env)
    log, _ = run_script(script, fake_bin, tmp_path / "work")
    (argv,) = _one(log, "srun")
    _argv_ends_with_trainer(_zero_split(argv), args)
    got = _env_of(log / "srun-env.0")
    for key, value in job.environment():
        assert got[key] == value


@SETTINGS
@given(env=envs, args=trainer_args)
@example(env=[("K", '$(touch pwned)`id`\\"')], args=["--set", "$(touch pwned)"])
def test_apptainer_script_runs_only_srun(
    env: list[tuple[str, str]], args: list[str], fake_bin: Path, tmp_path: Path
) -> None:
    job = _job(env, args)
    if job is None:
        return
    log, _ = run_script(
        slurm_script(job, SlurmOptions(runtime="apptainer")), fake_bin, tmp_path / "work"
    )
    (argv,) = _one(log, "srun")
    _argv_ends_with_trainer(_zero_split(argv), args)
    got = _env_of(log / "srun-env.0")
    wanted = dict(job.environment())
    # Apptainer's own injection: `export K="V"` with only `"` escaped, evaluated by a shell
    snippet = "".join(
        f'export V{i}="'
        + got["APPTAINERENV_" + k].replace('"', '\\"')
        + f'"\nprintf "%s\\0" "$V{i}"\n'
        for i, k in enumerate(wanted)
    )
    seen = subprocess.run(
        ["bash", "-c", snippet], capture_output=True, check=True, timeout=30
    ).stdout.decode()
    assert seen.split("\0")[:-1] == list(wanted.values())


@SETTINGS
@given(env=envs, args=trainer_args)
@example(env=[("K", "a\nAIBUILD_NODE\ntouch pwned\n")], args=["--set", "\nAIBUILD_NODE\n"])
@example(env=[], args=["--set", "$(id -u):$(id -g)", '"${gpus[@]}"', '"$node_addr"'])
def test_docker_script_runs_only_docker(
    env: list[tuple[str, str]], args: list[str], fake_bin: Path, tmp_path: Path
) -> None:
    job = _job(env, args, output="/shared/out")
    if job is None:
        return
    log, _ = run_script(
        slurm_script(job, SlurmOptions(runtime="docker")), fake_bin, tmp_path / "work"
    )
    assert len(_one(log, "srun")) == 1
    calls = [_zero_split(p) for p in _one(log, "docker")]
    assert len(calls) == 2  # the memlock probe, then the node's container
    assert calls[0][-3:] == ["--entrypoint", "true", IMAGE]
    run = calls[1]
    _argv_ends_with_trainer(run, args)
    given_env = dict(run[i + 1].split("=", 1) for i, w in enumerate(run) if w == "-e")
    for key, value in job.environment():
        assert given_env[key] == value
    assert run[run.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


# --------------------------------------------------------------------------- Compose, k8s


def compose_interpolate(text: str) -> str:
    """Compose's interpolation: ``$$`` is ``$``; ``$VAR`` and ``${VAR...}`` are replaced."""
    return re.sub(
        r"\$\$|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*",
        lambda m: "$" if m[0] == "$$" else "<INTERPOLATED>",
        text,
    )


@SETTINGS
@given(env=envs, args=trainer_args)
@example(env=[("K", "${HOME}$HOME$$")], args=["--set", "${PWD}"])
def test_compose_carries_values_as_written(env: list[tuple[str, str]], args: list[str]) -> None:
    job = _job(env, args)
    if job is None:
        return
    text = compose_yaml(job)
    assert all(line.startswith("#") for line in text.split("services:")[0].splitlines())
    train = yaml.safe_load(text)["services"]["train"]
    command = [compose_interpolate(a) for a in train["command"]]
    assert command == args
    environment = {k: compose_interpolate(v) for k, v in train.get("environment", {}).items()}
    for key, value in job.environment(multinode=False):
        assert environment[key] == value
    assert "ai.aibuild.run.owner" not in train["labels"]


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's expansion of env values, command and args: ``$$`` is ``$``, ``$(VAR)``
    a defined variable's value (else kept), any other ``$`` kept."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@SETTINGS
@given(env=envs, args=trainer_args)
@example(env=[("K", "$(NODE_RANK)$$(X)")], args=["--set", "$(NODE_RANK)"])
def test_k8s_carries_values_as_written(env: list[tuple[str, str]], args: list[str]) -> None:
    job = _job(env, args)
    if job is None:
        return
    job_doc = k8s_documents(job, "job")[1]
    container = job_doc["spec"]["template"]["spec"]["containers"][0]
    defined: dict[str, str] = {"NODE_RANK": "0"}
    for item in container["env"]:
        if "value" in item:
            defined[item["name"]] = kubelet_expand(item["value"], defined)
    for key, value in job.environment():
        assert defined[key] == value
    argv = [kubelet_expand(a, defined) for a in container["args"]]
    assert argv[-len(args) :] == args
    assert "--node-rank" in argv and argv[argv.index("--node-rank") + 1] == "0"  # still expands
