"""A SkyPilot task: the image on N nodes of any cloud or cluster SkyPilot reaches.

``sky launch THIS_FILE`` provisions ``num_nodes`` nodes with ``resources``
(``accelerators: H100:8``, ``image_id: docker:REF``, optional ``cpus``/``memory`` as
minimums), starts the image on each (with ``--shm-size`` from ``run.shm_size`` through the
task's ``config.docker.run_options``) and runs, in it:

- ``setup`` (GPU jobs only): ``aibuild train --selftest``, so a node whose GPU cannot
  run a kernel fails before training starts;
- ``run``: torchrun with static rendezvous at the first of ``$SKYPILOT_NODE_IPS``, node
  rank ``$SKYPILOT_NODE_RANK``, ``$SKYPILOT_NUM_NODES`` nodes and, when each process has a
  GPU, ``$SKYPILOT_NUM_GPUS_PER_NODE`` processes per node; then ``aibuild train`` with the
  trainer's flags.

``envs`` holds the job's variables (NCCL's, torchrun's rank prefix, ``--env``);
``file_mounts`` puts ``--data`` at ``/data`` and ``--output`` at ``/output``: a bucket URI
(``s3://``, ``gs://``, ``r2://``, ...) is mounted (``mode: MOUNT``), a local directory is
copied to every node (data only: the nodes cannot write back to this machine).

Every value that reaches the ``run`` and ``setup`` scripts is shell-quoted (``_quote``);
the variables SkyPilot sets are the only expansions.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from aibuild import __version__
from aibuild.contract import TRAIN_ENTRYPOINT
from aibuild.errors import ExportError
from aibuild.export.job import DATA_DIR, OUTPUT_DIR, ClusterJob
from aibuild.export.shell import word

# SkyPilot's names: its task YAML (``sky/utils/schemas.py``) and what it sets on each node
NODE_RANK = "SKYPILOT_NODE_RANK"
NODE_IPS = "SKYPILOT_NODE_IPS"
NUM_NODES = "SKYPILOT_NUM_NODES"
GPUS_PER_NODE = "SKYPILOT_NUM_GPUS_PER_NODE"
URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
ACCELERATOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _quote(value: str) -> str:
    """One shell word, through the one quoting function of every generated script."""
    return word(value)


def _var(name: str) -> str:
    """A variable SkyPilot sets, expanded as one word."""
    return f'"${{{name}}}"'


def accelerator_name(gpu: str | None) -> str | None:
    """The knowledge base's GPU model name as SkyPilot writes it: ``NVIDIA H100`` -> ``H100``,
    ``NVIDIA A10G (AWS)`` -> ``A10G``, ``GeForce RTX 4090`` -> ``RTX4090``."""
    if not gpu:
        return None
    name = re.sub(r"\(.*?\)", "", gpu).strip()
    name = re.sub(r"^(NVIDIA\s+)?(GeForce\s+)?", "", name)
    return re.sub(r"\s+", "", name) or None


def _accelerators(job: ClusterJob, override: str | None) -> str | None:
    if override is not None:
        name, _, count = override.partition(":")
        if not ACCELERATOR_RE.match(name) or (count and not count.isdigit()):
            raise ExportError(
                f"--accelerators {override!r} is not a SkyPilot accelerator: NAME or NAME:COUNT "
                "(A100-80GB:8)"
            )
        return override if count else f"{name}:{job.gpus_per_node or 1}"
    if not job.gpus_per_node:
        return None
    model = accelerator_name(job.plan.gpu)
    if model is None:  # pragma: no cover - an nvidia profile always names its GPU
        raise ExportError("the profile names no GPU model: pass --accelerators NAME:COUNT")
    return f"{model}:{job.gpus_per_node}"


def _mount(value: str, option: str, writable: bool) -> Any:
    if any(c in value for c in "\n\r\0"):
        raise ExportError(f"{option} {value!r} holds a control character")
    if URI_RE.match(value):
        return {"source": value, "mode": "MOUNT"}
    if writable:
        raise ExportError(
            f"{option} {value!r}: SkyPilot nodes cannot write to a directory on this machine; "
            "give a bucket (s3://BUCKET/PATH, gs://..., r2://...) for the output"
        )
    return value  # a local directory: SkyPilot copies it to every node


def run_script(job: ClusterJob) -> str:
    """torchrun on one node, from SkyPilot's variables, then the trainer with its flags."""
    per_node = (
        _var(GPUS_PER_NODE)
        if job.gpus_per_node and job.nproc_per_node == job.gpus_per_node
        else _quote(str(job.nproc_per_node))
    )
    port = str(job.rdzv_port or 29500)
    argv = [
        "torchrun",
        "--nnodes",
        _var(NUM_NODES),
        "--nproc-per-node",
        per_node,
        "--node-rank",
        _var(NODE_RANK),
        "--rdzv-backend",
        "static",
        "--rdzv-endpoint",
        f'"${{MASTER_ADDR}}":{port}',
        "--tee",
        "3",
        "-m",
        *(_quote(a) for a in TRAIN_ENTRYPOINT),
        *(_quote(a) for a in job.trainer_args),
    ]
    return (
        "set -eu\n"
        f"# node 0 hosts torchrun's rendezvous; {NODE_IPS} lists the nodes, node 0 first\n"
        f'MASTER_ADDR="$(printf \'%s\\n\' "${{{NODE_IPS}}}" | head -n 1)"\n'
        f"exec {' '.join(argv)}\n"
    )


def skypilot_task(job: ClusterJob, accelerators: str | None = None) -> dict[str, Any]:
    """The task as a mapping, in the order SkyPilot's docs write it."""
    resources: dict[str, Any] = {}
    accel = _accelerators(job, accelerators)
    if accel:
        resources["accelerators"] = accel
    resources["image_id"] = f"docker:{job.image}"
    if job.cpus_per_node:
        resources["cpus"] = f"{job.cpus_per_node}+"
    if job.memory_bytes:
        resources["memory"] = f"{-(-job.memory_bytes // (1 << 30))}+"  # GiB, at least
    env = dict(job.environment())
    if job.output:
        env["AIBUILD_OUTPUT"] = OUTPUT_DIR
    task: dict[str, Any] = {
        "name": job.name,
        "num_nodes": job.nodes,
        "resources": resources,
        "envs": env,
    }
    mounts: dict[str, Any] = {}
    if job.data:
        mounts[DATA_DIR] = _mount(job.data, "--data", writable=False)
    if job.output:
        mounts[OUTPUT_DIR] = _mount(job.output, "--output", writable=True)
    if mounts:
        task["file_mounts"] = mounts
    task["config"] = {"docker": {"run_options": [f"--shm-size={job.plan.run_shm_size}"]}}
    if job.gpus_per_node:
        task["setup"] = f"{' '.join(_quote(a) for a in TRAIN_ENTRYPOINT)} --selftest\n"
    task["run"] = run_script(job)
    return task


class _Dumper(yaml.SafeDumper):
    """Scripts as literal blocks (``|``), as people write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def skypilot_yaml(job: ClusterJob, accelerators: str | None = None) -> str:
    """The task YAML (``sky launch -c CLUSTER THIS_FILE``)."""
    if job.time_limit:
        raise ExportError(
            "--time does not apply to a SkyPilot task (SkyPilot has no job time limit; "
            "use `sky launch --down` or `sky jobs launch` and its own controls)"
        )
    header = (
        f"# Written by aibuild {__version__} (aibuild export skypilot): profile "
        f"{job.plan.profile_name}, {job.nodes} node(s) x {job.nproc_per_node} process(es).\n"
        "# Launch: sky launch -c CLUSTER THIS_FILE\n"
    )
    task = skypilot_task(job, accelerators)
    return header + yaml.dump(task, Dumper=_Dumper, sort_keys=False, width=100)
