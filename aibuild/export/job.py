"""A training job for a cluster, decided once: what every exporter (and ``aibuild run
--nodes``) shares.

- ``Rendezvous`` (``aibuild.run.rendezvous``) is how torchrun's agents on several nodes
  find each other; every exporter and ``aibuild run --nodes`` share it.
- ``cluster_job`` checks the request against the profile (nodes, GPUs per node,
  processes per node, the image reference, sizes and times) and returns a frozen
  ``ClusterJob``; every mistake is one ``ExportError`` line.
- ``pinned_image`` finds the ``name@sha256:`` a build record knows for an image.

Sizes are written as profiles write them (``16g``: binary units, as docker reads them);
times as Slurm writes them (``90``, ``1:30:00``, ``2-00:00:00``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aibuild import bounds, contract
from aibuild.errors import ExportError
from aibuild.export.shell import env_name
from aibuild.image.record import RECORD_DIR, recorded_builds
from aibuild.oci.reference import ReferenceError, parse_reference
from aibuild.profile.schema import parse_size
from aibuild.run.gpus import parse_gpus
from aibuild.run.rendezvous import DEFAULT_RDZV_PORT as DEFAULT_RDZV_PORT  # the exports' names
from aibuild.run.rendezvous import RANK_PREFIX_ENV as RANK_PREFIX_ENV
from aibuild.run.rendezvous import Rendezvous as Rendezvous
from aibuild.run.rendezvous import check_nodes as check_nodes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan

IMAGE_UID = contract.UID  # the non-root user every aibuild image runs as
DATA_DIR = contract.DATA_DIR
OUTPUT_DIR = contract.OUTPUT_DIR
WORKDIR = contract.WORKSPACE
# NCCL's settings for a multi-node job; a profile's software.env (baked into the image)
# wins over these.
NCCL_ENV = (("NCCL_DEBUG", "WARN"), ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"))

NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,48}[a-z0-9])?")  # a DNS-1035 label, room for -<index>
TIME_RE = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


# --------------------------------------------------------------------------- values


def size_bytes(text: str, option: str) -> int:
    """``16g`` -> bytes (b, k, m, g, t: binary units, as docker reads --shm-size), by the
    profile schema's size parser; no upper bound (a node's memory), not zero."""
    try:
        size = parse_size(text, maximum=None)
    except ValueError:
        size = 0
    if size == 0:
        raise ExportError(f"{option} {text!r} is not a size: a number with k, m, g or t (16g)")
    return size


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity, exactly (``17179869184`` -> ``16Gi``)."""
    for suffix, unit in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def time_seconds(text: str) -> int:
    """A Slurm time limit in seconds: ``MIN``, ``MIN:SEC``, ``H:MIN:SEC``, ``D-H``,
    ``D-H:MIN``, ``D-H:MIN:SEC``."""
    match = TIME_RE.fullmatch(text.strip())
    if not match:
        raise ExportError(
            f"--time {text!r} is not a time limit: MINUTES, HH:MM:SS or DAYS-HH[:MM[:SS]]"
        )
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + (first or 0) * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # H:M:S
        seconds = (first or 0) * 3600 + (second or 0) * 60 + third
    elif second is not None:  # M:S
        seconds = (first or 0) * 60 + second
    else:  # M
        seconds = (first or 0) * 60
    if seconds <= 0:
        raise ExportError(f"--time {text!r} is zero: give the job some time")
    return bounds.check("time_limit", seconds, "--time (seconds)", ExportError)


def job_name(name: str | None, plan: BuildPlan) -> str:
    """``--name``, else ``aibuild-<profile>``: a DNS label, so every scheduler takes it."""
    if name is None:
        name = "aibuild-" + re.sub(r"[^a-z0-9-]+", "-", plan.profile_name.lower()).strip("-")
        name = name[:50].rstrip("-")
    if not NAME_RE.fullmatch(name):
        raise ExportError(
            f"--name {name!r} is not a job name: lower-case letters, digits and '-', "
            "starting with a letter, at most 50 characters"
        )
    return name


# --------------------------------------------------------------------------- the image


def pinned_image(ref: str, plan: BuildPlan, record_dir: Path = RECORD_DIR) -> tuple[str, str]:
    """(the reference to run, a note for the user). A reference with a digest is kept;
    otherwise the newest build record of this profile that has ``ref`` as its image, a
    tag or a push target gives the ``name@sha256:`` it was pushed as."""
    wanted = parse_reference(ref)
    if wanted.digest:
        return ref, f"image {ref} (pinned by digest)"
    key = str(wanted)
    for record in recorded_builds(plan.profile_hash, record_dir):
        pushes = [p for p in record.get("pushes") or [] if isinstance(p, dict)]
        names = {
            record.get("image_ref"),
            *(record.get("tags") or []),
            *(p.get("ref") for p in pushes),
        }
        if key not in {_normal(n) for n in names if isinstance(n, str)}:
            continue
        for push in pushes:
            if _normal(str(push.get("ref", ""))) == key and push.get("pinned"):
                return str(push["pinned"]), f"image {ref} pinned by its build record"
        break
    return ref, (
        f"image {ref} is not pinned by digest: no build record here holds a push of it "
        "(`aibuild push` records one); nodes may run different images if the tag moves"
    )


def _normal(ref: str) -> str:
    """A reference as the parser writes it (``docker.io/library/x`` -> ``x:latest``)."""
    try:
        return str(parse_reference(ref))
    except ReferenceError:
        return ref


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class ClusterJob:
    """Everything a job file needs, checked. ``data``/``output`` are host paths for
    Slurm and Compose, claim names for Kubernetes."""

    name: str
    plan: BuildPlan
    image: str
    nodes: int
    nproc_per_node: int
    gpus_per_node: int
    gpu_devices: tuple[str, ...] = ()
    cpus_per_node: int | None = None
    memory_bytes: int | None = None
    time_limit: str | None = None
    data: str | None = None
    output: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    trainer_args: tuple[str, ...] = ()
    rdzv_port: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def shm_bytes(self) -> int:
        return size_bytes(self.plan.run_shm_size, "run.shm_size")

    @property
    def time_seconds(self) -> int | None:
        return time_seconds(self.time_limit) if self.time_limit else None

    def environment(self, *, multinode: bool = True) -> list[tuple[str, str]]:
        """The job's variables: torchrun's rank prefix (``multinode``), NCCL's (GPU jobs,
        unless the profile sets them), where the data and output are, then ``--env``
        (which wins)."""
        env = dict([RANK_PREFIX_ENV]) if multinode else {}
        if self.gpus_per_node:
            profile_env = dict(self.plan.env)
            env.update((k, v) for k, v in NCCL_ENV if k not in profile_env)
        if self.data:
            env[contract.ENV_DATA] = DATA_DIR
        if self.output:
            env[contract.ENV_OUTPUT] = OUTPUT_DIR
        env.update(self.env)
        return list(env.items())

    def rendezvous(
        self,
        endpoint_host: str,
        *,
        run_id: str = "none",
        node_rank: str | None = None,
        local_addr: str | None = None,
    ) -> Rendezvous:
        port = str(self.rdzv_port or DEFAULT_RDZV_PORT)
        endpoint = endpoint_host if ":" in endpoint_host else f"{endpoint_host}:{port}"
        return Rendezvous(self.nodes, self.nproc_per_node, endpoint, run_id, node_rank, local_addr)


def _gpus_per_node(gpus: str | None, plan: BuildPlan) -> tuple[int, tuple[str, ...]]:
    """(GPUs each node gets, device IDs when named) from a ``--gpus`` value (docker's
    syntax: all, N, device=0,1, none), by default the profile's ``run.gpus``."""
    try:
        request = parse_gpus(gpus if gpus is not None else plan.run_gpus)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if request is None:
        return 0, ()
    have = plan.gpu_count if plan.accelerator == "nvidia" else 0
    if request.device_ids:
        count = len(request.device_ids)
    elif request.count < 0:
        count = have
    else:
        count = request.count
    if count > have:
        what = (
            f"hardware.gpus is {have}"
            if plan.accelerator == "nvidia"
            else "it is a CPU profile (hardware.accelerator: cpu)"
        )
        raise ExportError(
            f"{count} GPUs per node asked for, but profile {plan.profile_name} has fewer: "
            f"{what}; ask for at most {have} or raise hardware.gpus"
        )
    return count, request.device_ids


def cluster_job(
    plan: BuildPlan,
    *,
    image: str | None = None,
    nodes: int = 1,
    nproc_per_node: int | None = None,
    gpus: str | None = None,
    name: str | None = None,
    cpus: int | None = None,
    memory: str | None = None,
    time_limit: str | None = None,
    data: str | None = None,
    output: str | None = None,
    env: Sequence[tuple[str, str]] = (),
    trainer_args: Sequence[str] = (),
    rdzv_port: int | None = None,
    record_dir: Path = RECORD_DIR,
) -> ClusterJob:
    """Check a request against ``plan`` and decide the job; ``ExportError`` for a mistake."""
    check_nodes(nodes)
    gpus_per_node, devices = _gpus_per_node(gpus, plan)
    if nproc_per_node is None:
        nproc_per_node = gpus_per_node or 1
    bounds.check("nproc_per_node", nproc_per_node, "--nproc-per-node", ExportError)
    if gpus_per_node and nproc_per_node > gpus_per_node:
        raise ExportError(
            f"--nproc-per-node {nproc_per_node} is more than the {gpus_per_node} GPUs per "
            "node: each process needs a GPU of its own"
        )
    if cpus is not None:
        bounds.check("cpus_per_node", cpus, "--cpus", ExportError)
    if rdzv_port is not None:
        bounds.check("rdzv_port", rdzv_port, "--rdzv-port", ExportError)
    memory_bytes = None
    if memory is not None:
        memory_bytes = size_bytes(memory, "--mem")
        bounds.check("memory_per_node", memory_bytes, f"--mem {memory[:40]!r} (bytes)", ExportError)
    for key, value in env:  # every generator writes them; names are checked once, here
        env_name(key)
        if "\x00" in value:
            raise ExportError(f"--env {key}: a NUL byte cannot be in a variable")
    for arg in trainer_args:
        if "\x00" in arg:
            raise ExportError(f"trainer argument {arg[:80]!r}: a NUL byte cannot be in one")
    if trainer_args and not trainer_args[0].startswith("-"):
        raise ExportError(
            f"a cluster job runs the trainer: ARGS after -- must be trainer flags "
            f"(--epochs 1), not a command ({trainer_args[0]!r})"
        )
    reference, note = pinned_image(image or plan.image_ref, plan, record_dir)
    if time_limit is not None:
        time_seconds(time_limit)
    return ClusterJob(
        name=job_name(name, plan),
        plan=plan,
        image=reference,
        nodes=nodes,
        nproc_per_node=nproc_per_node,
        gpus_per_node=gpus_per_node,
        gpu_devices=devices,
        cpus_per_node=cpus,
        memory_bytes=memory_bytes,
        time_limit=time_limit,
        data=data,
        output=output,
        env=tuple(env),
        trainer_args=tuple(trainer_args),
        rdzv_port=rdzv_port,
        notes=(note,),
    )
