"""A container's configuration, pure: what runs and how, never the engine.

- ``resolve_target`` decides what runs: a profile (its plan's image, and its ``run:``
  defaults), any other image reference, or the last image built in this directory.
- ``container_command`` decides entrypoint and arguments: trainer flags (ARGS that start
  with ``-``) are appended to the image's ``aibuild train`` entrypoint, other ARGS
  replace it, ``--nproc-per-node N`` wraps the trainer in ``torchrun``.
- ``ContainerOptions`` -> ``container_config``: the keyword arguments of
  ``client.containers.create`` (GPUs, shm, ulimits, mounts, user, labels, ports).
- ``with_plan_defaults``: the profile's run defaults, and with ``live`` its project
  bind-mounted at its workdir.
- ``env_pairs`` / ``label_pairs``: ``--env`` and ``--label`` read as docker reads them.

The cluster exports (``aibuild.export``) write job files from this configuration; the
container's life (``lifecycle``) and interactive sessions (``interactive``) run it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild import kv, labels
from aibuild.contract import DATA_DIR, ENV_DATA, ENV_OUTPUT, OUTPUT_DIR, TRAIN_ENTRYPOINT
from aibuild.errors import RunError
from aibuild.image.record import latest_record
from aibuild.profile.load import is_profile_ref
from aibuild.profile.resolve import plan_for
from aibuild.run.gpus import GpuRequest, parse_gpus
from aibuild.run.owner import owner_label

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan

# NVIDIA's recommendation for PyTorch containers: unlimited locked memory (pinned
# host buffers, RDMA) and a 64 MiB stack.
MEMLOCK_UNLIMITED = -1
STACK_BYTES = 67108864
DEFAULT_SHM_SIZE = "2g"  # for images that are not a profile's (docker's 64m starves DataLoader)
DEFAULT_GRACE_S = 10.0
RESERVED_LABEL_PREFIX = "ai.aibuild.run"


# ---------------------------------------------------------------------------
# What to run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTarget:
    """The image to run and, when it came from a profile, its plan and how to build it."""

    image: str
    plan: BuildPlan | None = None
    build_command: str | None = None


def resolve_target(ref: str | None, overrides: Sequence[str] = ()) -> RunTarget:
    """A profile (its plan's image_ref), an image reference, or (None) the last image built."""
    import shlex

    if ref is None:
        record = latest_record()
        if not record:
            raise RunError(
                "name a profile or an image to run (no image built yet in this directory: "
                "`aibuild image PROFILE` builds one)"
            )
        tags = record.get("tags") or [record["image_id"]]
        return RunTarget(image=str(tags[0]))
    if is_profile_ref(ref):
        plan = plan_for(ref, overrides)
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
        return RunTarget(plan.image_ref, plan, f"aibuild image {shlex.quote(ref)}{sets}")
    if looks_like_profile_path(ref):  # never an image: `docker pull ./x.yaml` is no advice
        raise RunError(
            f"profile {ref} not found: no such file (a profile is a .yaml file or a built-in "
            "name: `aibuild profiles` lists those)"
        )
    if overrides:
        raise RunError(f"--set applies to profiles; {ref!r} is not a profile (an image?)")
    return RunTarget(ref)


def looks_like_profile_path(ref: str) -> bool:
    """A path to a profile file (``x.yaml``, ``./x``, ``/abs/x``), not an image reference."""
    return ref.endswith((".yaml", ".yml")) or ref.startswith(("./", "../", "/", "~"))


def container_command(
    args: Sequence[str], nproc_per_node: int | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, command) for the container; None keeps the image's.

    Trainer flags (ARGS starting with ``-``, or none) go after the image's entrypoint;
    any other ARGS replace it. ``nproc_per_node`` runs the trainer under torchrun.
    """
    args = list(args)
    replaces = bool(args) and not args[0].startswith("-")
    if replaces:
        if nproc_per_node is not None:
            raise ValueError("--nproc-per-node runs the trainer; it cannot wrap a custom command")
        return [args[0]], args[1:]
    if nproc_per_node is not None:
        if nproc_per_node < 1:
            raise ValueError("--nproc-per-node must be at least 1")
        torchrun = ["torchrun", "--nproc-per-node", str(nproc_per_node), "-m", *TRAIN_ENTRYPOINT]
        return torchrun, args
    return None, args or None


# ---------------------------------------------------------------------------
# How to run it
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerOptions:
    """Everything about a run apart from the image. Unless ``gpus_given``, ``gpus`` comes
    from the profile's ``run.gpus``; ``shm_size`` None, from its ``run.shm_size``
    (``with_plan_defaults``)."""

    args: tuple[str, ...] = ()
    gpus: GpuRequest | None = None
    gpus_given: bool = False  # --gpus was given (``--gpus none`` is None, and given)
    shm_size: str | None = None
    ipc: str | None = None
    data: str | None = None
    output: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    detach: bool = False
    nproc_per_node: int | None = None
    user: str | None = None  # default: the caller's uid:gid with --output, a mount, a TTY
    grace_s: float = DEFAULT_GRACE_S
    labels: tuple[tuple[str, str], ...] = field(default=())
    interactive: bool = False  # -i: the caller's stdin goes to the container
    tty: bool = False  # -t: a terminal in the container, following the caller's
    live: bool = False  # --live: the profile's project bind-mounted at its workdir
    project_mount: tuple[str, str] | None = None  # (host folder, workdir), from ``live``
    ports: tuple[tuple[int, str, int], ...] = ()  # (container port, host address, host port)
    # a job file's container (``compose``, ``slurm``): labelled as what it is, with no owner
    exported: str | None = None


def container_config(options: ContainerOptions, image: str) -> dict[str, Any]:
    """The keyword arguments for ``client.containers.create`` (pure, testable)."""
    from docker.types import Mount, Ulimit

    entrypoint, command = container_command(options.args, options.nproc_per_node)
    environment: dict[str, str] = {}
    mounts = []
    user = options.user
    if options.data:
        mounts.append(
            Mount(DATA_DIR, str(Path(options.data).resolve()), type="bind", read_only=True)
        )
        environment[ENV_DATA] = DATA_DIR
    if options.output:
        mounts.append(Mount(OUTPUT_DIR, str(Path(options.output).resolve()), type="bind"))
        environment[ENV_OUTPUT] = OUTPUT_DIR
    if options.project_mount:
        host, workdir = options.project_mount
        mounts.append(Mount(workdir, host, type="bind"))
    if user is None and (options.output or options.project_mount or options.tty):
        # Files written to /output or the project belong to the caller, not to the image's
        # user, and so does an interactive session; that uid has no home in the image, so
        # give it one that is writable.
        user = f"{os.getuid()}:{os.getgid()}"
        environment["HOME"] = "/tmp"
    environment.update(dict(options.env))
    config: dict[str, Any] = {
        "image": image,
        "entrypoint": entrypoint,
        "command": command,
        "environment": environment,
        "mounts": mounts,
        "user": user,
        "name": options.name,
        # docker-py's "not detached" with stdin open is `docker run -i`: AttachStdin and
        # StdinOnce (the end of the caller's stdin closes the container's)
        "detach": not options.interactive,
        "labels": container_labels(options),
        "ulimits": [
            Ulimit(name="memlock", soft=MEMLOCK_UNLIMITED, hard=MEMLOCK_UNLIMITED),
            Ulimit(name="stack", soft=STACK_BYTES, hard=STACK_BYTES),
        ],
        "device_requests": [options.gpus.to_device_request()] if options.gpus else None,
        "auto_remove": True,  # the engine deletes it on exit, even if aibuild was killed
        "tty": options.tty or None,
        "stdin_open": options.interactive or None,
        "ports": {f"{c}/tcp": (host, port) for c, host, port in options.ports} or None,
    }
    if options.ipc:
        config["ipc_mode"] = options.ipc
    if options.ipc != "host":  # the host's namespace brings its own /dev/shm
        config["shm_size"] = options.shm_size or DEFAULT_SHM_SIZE
    return {k: v for k, v in config.items() if v is not None}


def container_labels(options: ContainerOptions) -> dict[str, str]:
    """Only a live, attached ``aibuild run`` names itself the owner (the reaper's mark); an
    exported job says what it is; a user's ``--label`` never takes aibuild's own keys."""
    if options.exported:
        own = {labels.EXPORTED: options.exported}
    else:
        own = {labels.RUN: "1", **({} if options.detach else {labels.RUN_OWNER: owner_label()})}
    user = {k: v for k, v in options.labels if not k.startswith(RESERVED_LABEL_PREFIX)}
    return {**user, **own}


def env_pairs(
    values: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``--env`` values -> pairs: ``K=V``, or a bare ``K`` taking the caller's value (as docker;
    a bare ``K`` that the caller does not have is left out)."""
    env = os.environ if environ is None else environ
    pairs: list[tuple[str, str]] = []
    for item in values:
        key, value = kv.split_item(item, option="--env", bare=True)
        if value is None:
            if key not in env:
                continue
            value = env[key]
        pairs.append((key, value))
    return pairs


def label_pairs(values: Sequence[str]) -> list[tuple[str, str]]:
    """``--label`` values -> pairs (``K=V``; a bare ``K`` is an empty label, as docker)."""
    pairs = []
    for item in values:
        key, value = kv.split_item(item, option="--label", key=kv.LABEL, bare=True)
        pairs.append((key, value or ""))
    return pairs


def with_plan_defaults(options: ContainerOptions, target: RunTarget) -> ContainerOptions:
    """``options`` with what was left unset taken from the target's profile (``run.gpus``,
    ``run.shm_size``, ``run.ipc``) and, with ``live``, its project mounted at its workdir; an image
    that is not a profile's keeps the engine's defaults."""
    plan = target.plan
    project = plan.project if plan else None
    if options.live and project is None:
        what = f"profile {plan.profile_name}" if plan else f"{target.image} (not a profile)"
        raise RunError(
            f"--live mounts a profile's project, and {what} has no project: section "
            "(project.path names the source folder)"
        )
    if options.nproc_per_node is not None and project is not None and project.command:
        raise RunError(
            "--nproc-per-node runs the embedded trainer under torchrun, but this profile's "
            "image runs project.command: put torchrun in it instead (e.g. torchrun "
            "--nproc-per-node 2 train.py)"
        )
    if plan is None:
        return options
    return replace(
        options,
        gpus=options.gpus if options.gpus_given else parse_gpus(plan.run_gpus),
        shm_size=options.shm_size or plan.run_shm_size,
        ipc=options.ipc or (plan.run_ipc if plan.run_ipc != "private" else None),
        project_mount=(project.path, project.workdir) if project and options.live else None,
    )


def runs_trainer(options: ContainerOptions) -> bool:
    """Whether the container runs the image's entrypoint (the trainer, or the project's
    command) with flags or none."""
    return not options.args or options.args[0].startswith("-")
