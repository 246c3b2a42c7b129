"""An sbatch script that runs the image once per node, and ``sbatch`` to submit it.

The script asks for the resources (``--nodes``, one task per node, ``--cpus-per-task``,
``--gpus-per-node``, ``--mem``, ``--time``), then takes torchrun's rendezvous from
Slurm's environment: the first host of the allocation (its ``NodeAddr``, which is the
host name unless the cluster says otherwise) and the job id as the rendezvous id.
``srun --label --kill-on-bad-exit=1`` starts one torchrun per node, prefixes every line
with its node, and ends the job when one node fails.

Container runtimes (``RUNTIMES``; ``DEFAULT_RUNTIME`` is pyxis):

- ``pyxis``: ``srun --container-image=REGISTRY#IMAGE`` (NVIDIA's enroot plugin);
  the container shares the node's network; the job's environment is passed in.
- ``apptainer`` / ``singularity``: ``apptainer exec [--nv] --cleanenv docker://IMAGE``;
  the job's variables go in as ``APPTAINERENV_NAME`` (``SINGULARITYENV_``), which
  ``--cleanenv`` lets through and which Apptainer evaluates in double quotes: their
  backslashes, dollars and backticks are escaped so that they arrive as written.
- ``docker``: ``docker run --init --rm --network host`` per node, named
  ``aibuild-<job id>-<node id>``. ``scancel`` signals the ``docker`` client, which
  forwards the signal to the container; ``--init`` makes sure PID 1 acts on it and
  ``--rm`` lets the engine remove the container when it exits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aibuild import __version__
from aibuild.errors import ExportError
from aibuild.export.job import DATA_DIR, DEFAULT_RDZV_PORT, OUTPUT_DIR, WORKDIR, ClusterJob
from aibuild.export.shell import ShellText, command, comment, env_name, export_line, word
from aibuild.oci.reference import DOCKER_HUB, parse_reference
from aibuild.run.config import MEMLOCK_UNLIMITED, ContainerOptions, container_config

RUNTIMES = ("pyxis", "apptainer", "singularity", "docker")
DEFAULT_RUNTIME = "pyxis"
# Per job, so that two jobs sharing a node (host networking) do not share a port.
JOB_PORT = f"$(({DEFAULT_RDZV_PORT} + SLURM_JOB_ID % 1000))"
# aibuild's own shell source in commands (typed: a user's value that reads the same is
# still quoted)
ENDPOINT = ShellText('"$RDZV_HOST:$RDZV_PORT"')
RUN_ID = ShellText('"$SLURM_JOB_ID"')
NODE_ADDR = ShellText('"$node_addr"')
# A node's address as Slurm knows it (NodeAddr: the host name unless the cluster says
# otherwise), for the node named in $1.
SLURM_NODE_ADDR = "scontrol show node -o \"$1\" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p'"
CONTAINER_NAME = ShellText('"aibuild-$SLURM_JOB_ID-$SLURM_NODEID"')
CALLER = ShellText('"$(id -u):$(id -g)"')
NODE_SCRIPT = ShellText('"$node_script"')
SLURM_WORD = re.compile(r"[A-Za-z0-9_.,:+-]+")  # partition and account names (fullmatch)


@dataclass(frozen=True)
class SlurmOptions:
    runtime: str = DEFAULT_RUNTIME
    partition: str | None = None
    account: str | None = None


# --------------------------------------------------------------------------- shell


# the docker node script's arrays, expanded as words: GPUs, memlock
ARRAYS = (ShellText('"${gpus[@]}"'), ShellText('"${memlock[@]}"'))


def _mount_path(path: str, option: str) -> str:
    absolute = os.path.abspath(path)
    if any(c in absolute for c in ":,\n"):
        raise ExportError(f"{option} {path!r}: a path with ':', ',' or a newline cannot be mounted")
    return absolute


# --------------------------------------------------------------------------- images


def enroot_image(ref: str) -> str:
    """An image reference as pyxis/enroot write it: ``REGISTRY#PATH[:TAG|@DIGEST]``
    (Docker Hub images without a registry)."""
    parsed = parse_reference(ref)
    name = (
        parsed.name if parsed.registry == DOCKER_HUB else f"{parsed.registry}#{parsed.repository}"
    )
    return f"{name}@{parsed.digest}" if parsed.digest else f"{name}:{parsed.tag}"


# --------------------------------------------------------------------------- runtimes


def _mounts(job: ClusterJob) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) for the data and output directories."""
    mounts = []
    if job.data:
        mounts.append((_mount_path(job.data, "--data"), DATA_DIR, True))
    if job.output:
        mounts.append((_mount_path(job.output, "--output"), OUTPUT_DIR, False))
    return mounts


def _pyxis(job: ClusterJob, torchrun: list[str]) -> list[list[str]]:
    mounts = ",".join(f"{src}:{dst}{':ro' if ro else ''}" for src, dst, ro in _mounts(job))
    return [
        [f"--container-image={enroot_image(job.image)}", "--no-container-entrypoint"],
        ["--no-container-mount-home", f"--container-workdir={WORKDIR}"],
        [f"--container-mounts={mounts}"] if mounts else [],
        torchrun,
    ]


def _apptainer(job: ClusterJob, torchrun: list[str], binary: str) -> list[list[str]]:
    binds = ",".join(f"{src}:{dst}{':ro' if ro else ''}" for src, dst, ro in _mounts(job))
    return [
        [binary, "exec", *(["--nv"] if job.gpus_per_node else [])],
        ["--cleanenv", "--no-home", "--pwd", WORKDIR],
        ["--bind", binds] if binds else [],
        [f"docker://{job.image}", *torchrun],
    ]


def apptainer_value(value: str) -> str:
    """A value for ``APPTAINERENV_*``: Apptainer writes it into ``export K="VALUE"`` (only
    ``"`` escaped) and evaluates that, so backslashes, dollars and backticks are escaped
    here."""
    for char in ("\\", "$", "`"):
        value = value.replace(char, "\\" + char)
    return value


def _docker(job: ClusterJob, torchrun: list[str]) -> list[list[str]]:
    """``docker run`` for one node, from the same container config as ``aibuild run``
    (shm, memlock/stack ulimits, mounts, environment); GPUs are the ones Slurm gave
    the step."""
    options = ContainerOptions(
        shm_size=job.plan.run_shm_size,
        data=_mount_path(job.data, "--data") if job.data else None,
        output=_mount_path(job.output, "--output") if job.output else None,
        env=tuple(job.environment()),
        exported="slurm",  # a job, not a run: no owner for a reaper to judge
    )
    config = container_config(options, job.image)
    ulimits = [u for u in config["ulimits"] if u["Name"] != "memlock"]
    segments = [
        ["docker", "run", "--init", "--rm", "--name", CONTAINER_NAME],
        # the node's network, as pyxis and Apptainer have it; its process IDs too, so that
        # two nodes on one host never look alike to the rendezvous (address, pid)
        ["--network", "host", "--pid", "host"],
        ["--shm-size", str(config["shm_size"])],
        [*ARRAYS[1:], *(f"--ulimit={u['Name']}={u['Soft']}:{u['Hard']}" for u in ulimits)],
    ]
    if job.gpus_per_node:
        segments.append([ARRAYS[0]])
    if "user" in config:  # files in --output belong to whoever submitted the job
        segments.append(["--user", CALLER])
    segments += [["-e", f"{env_name(k)}={v}"] for k, v in config["environment"].items()]
    for mount in config["mounts"]:
        ro = ":ro" if mount.get("ReadOnly") else ""
        segments.append(["-v", f"{mount['Source']}:{mount['Target']}{ro}"])
    segments.append([f"--label={k}={v}" for k, v in config["labels"].items()])
    segments.append(["--entrypoint", torchrun[0], job.image, *torchrun[1:]])
    return segments


def _docker_node_script(job: ClusterJob, torchrun: list[str]) -> str:
    memlock = f"--ulimit=memlock={MEMLOCK_UNLIMITED}:{MEMLOCK_UNLIMITED}"
    probe = ["docker", "run", "--rm", memlock, "--entrypoint", "true", job.image]
    lines = [
        "set -euo pipefail",
        "# This node's address for torchrun to give the others: inside a container a node's",
        "# own name for itself can be localhost.",
        f"node_addr() {{ {SLURM_NODE_ADDR}; }}",
        'node_addr=$(node_addr "$SLURMD_NODENAME")',
        "node_addr=${node_addr:-$(hostname -f)}",
        "# NVIDIA's memlock=-1 where the engine can raise it (as aibuild run does)",
        f"memlock=({memlock})",
        f"if ! {command([probe])} >/dev/null 2>&1; then",
        '    echo "aibuild: the engine cannot raise memlock to unlimited; using its default" >&2',
        "    memlock=()",
        "fi",
    ]
    if job.gpus_per_node:
        lines += [
            "# the GPUs Slurm gave this step (their IDs on the host), else any N",
            f"gpus=(--gpus {job.gpus_per_node})",
            "ids=${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}",
            'if [[ -n $ids ]]; then gpus=(--gpus "\\"device=$ids\\""); fi',
        ]
    lines.append("exec " + command(_docker(job, torchrun)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the script


def slurm_memory(size: int) -> str:
    """Bytes as sbatch --mem reads them: whole GiB as ``G``, else MiB rounded up."""
    mib = -(-size // (1 << 20))
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _directives(job: ClusterJob, options: SlurmOptions) -> list[str]:
    cpus = job.cpus_per_node or job.nproc_per_node
    values: list[tuple[str, object]] = [
        ("job-name", job.name),
        ("nodes", job.nodes),
        ("ntasks-per-node", 1),
        ("cpus-per-task", cpus),
    ]
    if job.gpus_per_node:
        values.append(("gpus-per-node", job.gpus_per_node))
    if job.memory_bytes:
        values.append(("mem", slurm_memory(job.memory_bytes)))
    if job.time_limit:
        values.append(("time", job.time_limit.strip()))
    for key, value in (("partition", options.partition), ("account", options.account)):
        if value is not None:
            if not SLURM_WORD.fullmatch(value):
                raise ExportError(f"--{key} {value!r} is not a Slurm {key} name")
            values.append((key, value))
    return [f"#SBATCH --{key}={value}" for key, value in values]


def slurm_script(job: ClusterJob, options: SlurmOptions | None = None) -> str:
    """The sbatch script for ``job``."""
    options = options or SlurmOptions()
    if options.runtime not in RUNTIMES:
        raise ExportError(
            f"unknown Slurm runtime {options.runtime!r}: one of {', '.join(RUNTIMES)}"
        )
    rdzv = job.rendezvous(ENDPOINT, run_id=RUN_ID)
    torchrun = rdzv.torchrun(job.trainer_args)
    port = str(job.rdzv_port) if job.rdzv_port else JOB_PORT
    cpus = job.cpus_per_node or job.nproc_per_node
    srun = [
        "srun",
        "--label",
        "--kill-on-bad-exit=1",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus}",  # srun does not inherit sbatch's since Slurm 22.05
    ]
    header = [
        "#!/bin/bash",
        comment(
            f"# Written by aibuild {__version__} (aibuild export slurm): profile "
            f"{job.plan.profile_name}, {job.nodes} node(s) x {job.nproc_per_node} process(es), "
            f"runtime {options.runtime}."
        ),
        comment(f"# Image: {job.image}"),
        "# Submit: sbatch THIS_FILE (or aibuild submit slurm ...). Each log line starts "
        "with its node (srun --label).",
        *_directives(job, options),
        "set -euo pipefail",
        "",
        "# torchrun's c10d rendezvous: hosted on the allocation's first node, named by the job id.",
        'first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"node_addr() {{ {SLURM_NODE_ADDR}; }}",
        'RDZV_HOST=$(node_addr "$first_node")',
        "export RDZV_HOST=${RDZV_HOST:-$first_node}",
        f"export RDZV_PORT={port}",
        'echo "aibuild: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s), '
        'rendezvous at $RDZV_HOST:$RDZV_PORT" >&2',
        "",
    ]
    if options.runtime == "pyxis":
        body = [export_line(k, v) for k, v in job.environment()]
        body.append(command([srun, *_pyxis(job, torchrun)]))
    elif options.runtime in ("apptainer", "singularity"):
        prefix = options.runtime.upper() + "ENV_"
        body = [export_line(k, apptainer_value(v), prefix) for k, v in job.environment()]
        body.append(command([srun, *_apptainer(job, torchrun, options.runtime)]))
    else:
        torchrun = job.rendezvous(ENDPOINT, run_id=RUN_ID, local_addr=NODE_ADDR).torchrun(
            job.trainer_args
        )
        # the node's script is one single-quoted word: no heredoc whose delimiter a value
        # could hold
        body = [
            "# One container per node; scancel stops it (docker run --init --rm).",
            f"node_script={word(_docker_node_script(job, torchrun))}",
            command([srun, ["bash", "-c", NODE_SCRIPT]]),
        ]
    return "\n".join([*header, *body]) + "\n"


# --------------------------------------------------------------------------- submit


def runtime_problem(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (on the submitting host), or None."""
    if runtime == "pyxis":
        srun = shutil.which("srun")
        if srun is None:
            return "srun is not on PATH"
        help_text = subprocess.run(
            [srun, "--help"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        if "--container-image" not in help_text:
            return "srun has no --container-image: the pyxis plugin is not installed"
        return None
    if shutil.which(runtime) is None:
        return f"{runtime} is not on PATH"
    return None


@dataclass(frozen=True)
class Submitted:
    job_id: str
    exit_code: int | None = None  # with wait: the job's exit code


def submit(script: str, runtime: str, *, wait: bool = False, cwd: Path | None = None) -> Submitted:
    """Run ``sbatch --parsable`` on ``script`` (given on stdin); with ``wait``, until the
    job ends (``sbatch --wait``)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ExportError(
            "sbatch is not on PATH: submit from a Slurm login node, or write the script "
            "with `aibuild export slurm` and submit it there"
        )
    problem = runtime_problem(runtime)
    if problem:
        raise ExportError(
            f"the {runtime} runtime is not installed here ({problem}); pick another with "
            f"--runtime ({', '.join(RUNTIMES)})"
        )
    argv = [sbatch, "--parsable", *(["--wait"] if wait else [])]
    result = subprocess.run(
        argv, input=script, capture_output=True, text=True, cwd=cwd, check=False
    )
    job_id = result.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        message = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
        raise ExportError(f"sbatch refused the job: {message[-1]}")
    return Submitted(job_id, result.returncode if wait else None)


__all__ = [
    "DEFAULT_RUNTIME",
    "RUNTIMES",
    "SlurmOptions",
    "Submitted",
    "enroot_image",
    "runtime_problem",
    "slurm_script",
    "submit",
]
