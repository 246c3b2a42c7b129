"""``aibuild run`` and ``aibuild doctor``: parse, call run / doctor, print."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from aibuild.cli.options import json_option, set_option

MAX_GRACE_S = 3600  # an hour to save a checkpoint is more than any trainer needs
MAX_PROCS = 1024  # processes per node under torchrun


def _gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from aibuild.run.gpus import parse_gpus

    if value is None:
        return None
    try:
        return ("given", parse_gpus(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _shm_size(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from aibuild.profile.schema import parse_size

    if value is not None:
        try:
            parse_size(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _grace(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= MAX_GRACE_S:
        raise click.BadParameter(f"{value} is not a number of seconds from 0 to {MAX_GRACE_S}")
    return value


def _pairs(parse: Any) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
        try:
            return tuple(parse(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _env(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from aibuild.run.config import env_pairs

    return _pairs(env_pairs)(ctx, param, value)


def _labels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from aibuild.run.config import label_pairs

    return _pairs(label_pairs)(ctx, param, value)


gpus_option = click.option(
    "--gpus",
    callback=_gpus,
    metavar="all|N|device=0,1|none",
    help="GPUs to pass through, as docker run --gpus. Default: the profile's run.gpus.",
)
shm_size_option = click.option(
    "--shm-size",
    metavar="SIZE",
    callback=_shm_size,
    help="/dev/shm size (e.g. 16g, at most 1024g). Default: the profile's.",
)
data_option = click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="Dataset directory, mounted read-only at /data (AIBUILD_DATA=/data).",
)
env_option = click.option(
    "-e", "--env", multiple=True, callback=_env, metavar="KEY=VALUE", help="Set a variable."
)


def run_console() -> Any:
    """Where a run shows things: the container's output on our stdout and stderr, as
    bytes; aibuild's own lines on stderr."""
    from aibuild.cli.options import stderr_log
    from aibuild.run.lifecycle import Console

    return Console(sys.stdout.buffer, sys.stderr.buffer, stderr_log(quiet=False))


def container_options(**given: Any) -> Any:
    """``ContainerOptions`` from the options above (``gpus`` as their callback gives it)."""
    from aibuild.run.config import ContainerOptions

    gpus = given.pop("gpus", None)
    return ContainerOptions(
        gpus=gpus[1] if gpus is not None else None, gpus_given=gpus is not None, **given
    )


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    short_help="Run a profile's image (or any image) with GPU passthrough.",
)
@click.argument("target", metavar="[PROFILE | IMAGE]", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@set_option
@gpus_option
@shm_size_option
@click.option("--ipc", metavar="MODE", help="IPC namespace (e.g. host) instead of --shm-size.")
@data_option
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Output directory, mounted at /output; the run uses your uid:gid so you own the files.",
)
@click.option(
    "--live",
    is_flag=True,
    help="Bind-mount the profile's project at its workdir: code edits need no rebuild.",
)
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (as docker run -i).")
@click.option(
    "-t", "--tty", is_flag=True, help="A terminal in the container (as docker run -t; with -i)."
)
@env_option
@click.option("--name", help="Container name.")
@click.option(
    "--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE", help="Label."
)
@click.option(
    "-d", "--detach", is_flag=True, help="Start and return; the engine removes it on exit."
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1, max=MAX_PROCS),
    help="Run the trainer under torchrun with N processes.",
)
@click.option(
    "--nodes",
    type=int,
    help="Run N containers as N nodes of one torchrun job (c10d rendezvous) on a network "
    "of their own.",
)
@click.option(
    "--grace",
    type=float,
    callback=_grace,
    default=10.0,
    show_default=True,
    help=f"Seconds between SIGTERM and SIGKILL on Ctrl-C (0 to {MAX_GRACE_S}).",
)
def run(
    target: str | None,
    args: tuple[str, ...],
    overrides: tuple[str, ...],
    gpus: Any,
    shm_size: str | None,
    ipc: str | None,
    data: str | None,
    output: str | None,
    env: tuple[tuple[str, str], ...],
    name: str | None,
    labels: tuple[tuple[str, str], ...],
    detach: bool,
    nproc_per_node: int | None,
    nodes: int | None,
    grace: float,
    live: bool,
    interactive: bool,
    tty: bool,
) -> None:
    """Run a profile's image (its image_ref) or any IMAGE; exit with the container's code.

    ARGS after `--` that start with `-` are flags for the image's command (the trainer,
    or the profile's project.command: `-- --epochs 1`); other ARGS replace it
    (`-- python -c "import torch"`). Without a target, the last image built in this
    directory runs. `-it` attaches this terminal, as docker run -it.
    """
    from aibuild.run.config import container_command

    try:
        container_command(args, nproc_per_node)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if (interactive or tty) and detach:
        raise click.UsageError("-i/-t attach this terminal; -d detaches: choose one")
    options = container_options(
        args=args,
        gpus=gpus,
        shm_size=shm_size,
        ipc=ipc,
        data=data,
        output=output,
        env=env,
        name=name,
        labels=labels,
        detach=detach,
        nproc_per_node=nproc_per_node,
        grace_s=grace,
        live=live,
        interactive=interactive,
        tty=tty,
    )
    if nodes is not None:
        from aibuild.run.multinode import run_multinode

        sys.exit(run_multinode(target, overrides, options, nodes, run_console()))
    from aibuild.run.container import run_image

    sys.exit(run_image(target, overrides, options, run_console()))


@click.command()
@click.argument("profile", metavar="[PROFILE]", required=False)
@set_option
@json_option
@click.pass_context
def doctor(
    ctx: click.Context, profile: str | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """Check this host: engine, NVIDIA driver and GPUs, GPU runtime; against PROFILE if given.

    Exits 1 when a check fails. AIBUILD_NVIDIA_SMI names the nvidia-smi to run;
    AIBUILD_NVIDIA_SMI_OUTPUT a file with a recorded output to use instead.
    """
    from aibuild.doctor import diagnose, format_report
    from aibuild.profile.resolve import plan_for

    report = diagnose(plan_for(profile, overrides) if profile is not None else None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(format_report(report))
    if not report.ok:
        ctx.exit(1)
