"""``aibuild export {slurm,k8s,skypilot,compose}`` and ``aibuild submit slurm``: parse, call
``aibuild.export``, print the job (or the submitted job's id)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from aibuild.cli.options import profile_argument, set_option

F = TypeVar("F", bound=Callable[..., Any])


def _env(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from aibuild.run.config import env_pairs

    try:
        return tuple(env_pairs(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


_args = click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRAINER ARGS...]")
_image = click.option(
    "--image",
    metavar="REF",
    help="Image to run. Default: the profile's; pinned by digest when a build record "
    "holds a push of it.",
)
_nodes = click.option("--nodes", type=int, default=1, show_default=True, help="Nodes (machines).")
_nproc = click.option(
    "--nproc-per-node", type=int, help="Processes per node. Default: its GPUs, else 1."
)
_gpus_per_node = click.option(
    "--gpus-per-node",
    type=click.IntRange(min=0),
    help="GPUs per node. Default: the profile's (hardware.gpus, through run.gpus).",
)
_cpus = click.option("--cpus", type=int, help="CPUs per node.")
_mem = click.option("--mem", metavar="SIZE", help="Memory per node, e.g. 64g.")
_time = click.option("--time", "time_limit", metavar="TIME", help="Time limit: MIN, H:M:S, D-H.")
_name = click.option("--name", help="Job name. Default: aibuild-PROFILE.")
_env_option = click.option(
    "-e", "--env", multiple=True, callback=_env, metavar="KEY=VALUE", help="Set a variable."
)
_rdzv_port = click.option(
    "--rdzv-port",
    type=int,
    help="torchrun's rendezvous port. Default: 29500 (Slurm: 29500 + job id % 1000).",
)
_file = click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(dir_okay=False),
    help="Write the job here instead of to stdout.",
)
_data_dir = click.option(
    "--data", metavar="DIR", help="Dataset directory on the nodes, read-only at /data."
)
_output_dir = click.option(
    "--output", metavar="DIR", help="Output directory on the nodes (shared), at /output."
)

# what every multi-node job takes (Slurm, Kubernetes)
_NODE_JOB = (
    profile_argument,
    _args,
    set_option,
    _image,
    _nodes,
    _nproc,
    _gpus_per_node,
    _cpus,
    _mem,
    _time,
)


def _slurm_options(func: F) -> F:
    from aibuild.export.slurm import DEFAULT_RUNTIME, RUNTIMES

    runtime = click.option(
        "--runtime",
        type=click.Choice(RUNTIMES),
        default=DEFAULT_RUNTIME,
        show_default=True,
        help="How each node runs the image: pyxis (srun --container-image), apptainer or "
        "singularity (exec docker://IMAGE), docker (docker run --init --rm).",
    )
    partition = click.option("--partition", help="Slurm partition.")
    account = click.option("--account", help="Slurm account.")
    return _options(
        *_NODE_JOB,
        runtime,
        partition,
        account,
        _data_dir,
        _output_dir,
        _env_option,
        _name,
        _rdzv_port,
        _file,
    )(func)


def _job(
    profile: str,
    overrides: tuple[str, ...],
    args: tuple[str, ...],
    gpus: str | None = None,
    **fields: Any,
) -> Any:
    from aibuild.export.job import cluster_job
    from aibuild.profile.resolve import plan_for

    job = cluster_job(plan_for(profile, overrides), gpus=gpus, trainer_args=args, **fields)
    for note in job.notes:
        click.echo(f"aibuild: {note}", err=True)
    return job


def _gpus(gpus_per_node: int | None) -> str | None:
    return None if gpus_per_node is None else str(gpus_per_node)


JOB_MARK = b"# Written by aibuild"  # the first line of every job file aibuild writes


def _check_file(path: str | None, profile: str) -> None:
    """``-f FILE`` checked before any work: not a link, not the profile, not someone's file."""
    from aibuild.outfile import check_target, header_mark

    if path is not None:
        check_target(Path(path), option="-f", ours=header_mark(JOB_MARK), inputs=[profile])


def _write(text: str, path: str | None, what: str, profile: str) -> None:
    from aibuild.outfile import header_mark, write_text

    if path is None:
        click.echo(text, nl=False)
        return
    write_text(Path(path), text, option="-f", ours=header_mark(JOB_MARK), inputs=[profile])
    click.echo(f"aibuild: wrote {what} to {path}", err=True)


def _slurm(
    profile: str,
    args: tuple[str, ...],
    overrides: tuple[str, ...],
    image: str | None,
    nodes: int,
    nproc_per_node: int | None,
    gpus_per_node: int | None,
    cpus: int | None,
    mem: str | None,
    time_limit: str | None,
    runtime: str,
    partition: str | None,
    account: str | None,
    data: str | None,
    output: str | None,
    env: tuple[tuple[str, str], ...],
    name: str | None,
    rdzv_port: int | None,
) -> str:
    from aibuild.export.slurm import SlurmOptions, slurm_script

    job = _job(
        profile,
        overrides,
        args,
        gpus=_gpus(gpus_per_node),
        image=image,
        nodes=nodes,
        nproc_per_node=nproc_per_node,
        cpus=cpus,
        memory=mem,
        time_limit=time_limit,
        data=data,
        output=output,
        env=env,
        name=name,
        rdzv_port=rdzv_port,
    )
    return slurm_script(job, SlurmOptions(runtime, partition, account))


def _submit(script: str, runtime: str, wait: bool) -> None:
    from aibuild.export.slurm import submit

    if wait:
        click.echo("aibuild: submitting; waiting for the job to end (sbatch --wait)", err=True)
    result = submit(script, runtime, wait=wait)
    click.echo(f"submitted batch job {result.job_id}")
    if result.exit_code is not None:
        click.echo(
            f"aibuild: job {result.job_id} ended with exit code {result.exit_code}", err=True
        )
        sys.exit(result.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export() -> None:
    """Write a training job for a cluster: an sbatch script, Kubernetes objects, a SkyPilot
    task, a Compose file.

    The job runs PROFILE's image with torchrun on every node; trainer flags go after `--`.
    aibuild writes the job and never schedules it (`aibuild submit slurm` hands it to sbatch).
    """


@export.command("slurm")
@_slurm_options
@click.option("--submit", "submit_it", is_flag=True, help="Submit it with sbatch too.")
@click.option("--wait", is_flag=True, help="With --submit: wait for the job (sbatch --wait).")
def export_slurm(path: str | None, submit_it: bool, wait: bool, **fields: Any) -> None:
    """An sbatch script: resources, torchrun's rendezvous from Slurm, srun of the image per node."""
    _check_file(path, fields["profile"])
    script = _slurm(**fields)
    if path is not None or not submit_it:
        _write(script, path, "the sbatch script", fields["profile"])
    if submit_it:
        _submit(script, fields["runtime"], wait)
    elif wait:
        raise click.UsageError("--wait needs --submit")


@export.command("k8s")
@_options(
    *_NODE_JOB,
    click.option(
        "--kind",
        type=click.Choice(["job", "trainjob", "pytorchjob"]),
        default="job",
        show_default=True,
        help="job: Indexed Job + headless Service (no operator); trainjob: Kubeflow Trainer "
        "v2's TrainJob (torch-distributed runtime); pytorchjob: Kubeflow's legacy PyTorchJob.",
    ),
    click.option(
        "--queue",
        metavar="NAME",
        help="Kueue LocalQueue to submit through (the kueue.x-k8s.io/queue-name label).",
    ),
    click.option(
        "--data-claim", metavar="PVC", help="PersistentVolumeClaim for /data (read-only)."
    ),
    click.option(
        "--output-claim", metavar="PVC", help="PersistentVolumeClaim for /output (else emptyDir)."
    ),
    _env_option,
    _name,
    _rdzv_port,
    _file,
)
def export_k8s(
    profile: str,
    args: tuple[str, ...],
    overrides: tuple[str, ...],
    gpus_per_node: int | None,
    kind: str,
    queue: str | None,
    data_claim: str | None,
    output_claim: str | None,
    mem: str | None,
    path: str | None,
    **fields: Any,
) -> None:
    """Kubernetes objects for a multi-node job (kubectl apply -f)."""
    from aibuild.export.k8s import k8s_yaml

    _check_file(path, profile)
    job = _job(
        profile,
        overrides,
        args,
        gpus=_gpus(gpus_per_node),
        data=data_claim,
        output=output_claim,
        memory=mem,
        **fields,
    )
    _write(k8s_yaml(job, kind, queue), path, f"the Kubernetes {kind}", profile)


@export.command("compose")
@_options(
    profile_argument,
    _args,
    set_option,
    _image,
    click.option(
        "--gpus",
        metavar="all|N|device=0,1|none",
        help="GPUs, as docker run --gpus. Default: the profile's run.gpus.",
    ),
    _nproc,
    _data_dir,
    _output_dir,
    _env_option,
    _file,
)
def export_compose(
    profile: str,
    args: tuple[str, ...],
    overrides: tuple[str, ...],
    gpus: str | None,
    path: str | None,
    **fields: Any,
) -> None:
    """A Compose file for one multi-GPU host (docker compose up)."""
    from aibuild.export.compose import compose_yaml

    _check_file(path, profile)
    job = _job(profile, overrides, args, gpus=gpus, **fields)
    memlock = _memlock_works(job.image)
    _write(compose_yaml(job, memlock), path, "the Compose file", profile)


def _memlock_works(image: str) -> bool:
    """Whether to keep memlock -1 in the Compose file: unless this host's engine answers and
    refuses it (as ``aibuild devcontainer`` decides); a note in the file says what to do."""
    from aibuild.engine import client_session
    from aibuild.errors import AibuildError
    from aibuild.run.devcontainer import memlock_allowed

    try:
        with client_session(None) as engine:
            allowed = memlock_allowed(engine, image)
    except AibuildError:
        return True
    if allowed is False:
        click.echo(
            "aibuild: warning: this engine cannot raise memlock to unlimited: the Compose "
            "file leaves it out (docker compose up would refuse it here)",
            err=True,
        )
    return allowed is not False


@export.command("skypilot")
@_options(
    profile_argument,
    _args,
    set_option,
    _image,
    _nodes,
    _nproc,
    _gpus_per_node,
    click.option(
        "--accelerators",
        metavar="NAME[:COUNT]",
        help="SkyPilot's accelerator, e.g. A100-80GB:8. Default: the profile's GPU model "
        "and the GPUs per node.",
    ),
    _cpus,
    _mem,
    click.option(
        "--data",
        metavar="URI|DIR",
        help="Dataset at /data: a bucket URI (s3://, gs://, r2://: mounted) or a local "
        "directory (copied to every node).",
    ),
    click.option(
        "--output", metavar="URI", help="Bucket URI mounted at /output (s3://, gs://, r2://)."
    ),
    _env_option,
    _name,
    _rdzv_port,
    _file,
)
def export_skypilot(
    profile: str,
    args: tuple[str, ...],
    overrides: tuple[str, ...],
    gpus_per_node: int | None,
    accelerators: str | None,
    mem: str | None,
    path: str | None,
    **fields: Any,
) -> None:
    """A SkyPilot task YAML: the image with torchrun on N nodes (sky launch)."""
    from aibuild.export.skypilot import skypilot_yaml

    job = _job(profile, overrides, args, gpus=_gpus(gpus_per_node), memory=mem, **fields)
    _write(skypilot_yaml(job, accelerators), path, "the SkyPilot task", profile)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def submit() -> None:
    """Write a cluster job and hand it to the scheduler (Slurm's sbatch)."""


@submit.command("slurm")
@_slurm_options
@click.option(
    "--wait", is_flag=True, help="Wait for the job to end (sbatch --wait); its exit code."
)
def submit_slurm(path: str | None, wait: bool, **fields: Any) -> None:
    """Write the sbatch script (`aibuild export slurm`) and submit it; prints the job id."""
    _check_file(path, fields["profile"])
    script = _slurm(**fields)
    if path is not None:
        _write(script, path, "the sbatch script", fields["profile"])
    _submit(script, fields["runtime"], wait)
