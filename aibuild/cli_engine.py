"""The engine-facing commands: ``image``, ``run``, ``doctor``, ``wheelhouse``.

Each parses its options, calls one library function (build.build_image,
run.run_container, doctor.diagnose, wheelhouse.download_wheelhouse) and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from aibuild.cli_options import (
    extra_index_option,
    find_links_option,
    json_option,
    profile_argument,
    render_options,
    render_options_from,
    set_option,
)
from aibuild.cli_publish import publish_options


def _build_args(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from aibuild.build import parse_build_args

    try:
        return tuple(parse_build_args(value).items())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@profile_argument
@set_option
@render_options
@click.option(
    "-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]", help="Extra tag (repeatable)."
)
@click.option("--no-cache", is_flag=True, help="Build every step afresh.")
@click.option("--pull", is_flag=True, help="Pull a newer base image first.")
@click.option(
    "--build-arg",
    "build_args",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_build_args,
    help="Build-time variable (repeatable). Proxy variables are passed from the environment.",
)
@click.option(
    "--network",
    metavar="MODE",
    envvar="AIBUILD_BUILD_NETWORK",
    help="Network for RUN steps (bridge, host, none); default: the engine's. "
    "Env: AIBUILD_BUILD_NETWORK.",
)
@click.option(
    "--context-dir",
    type=click.Path(file_okay=False),
    help="Keep the rendered build context in this directory (replaced).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@json_option
@publish_options
def image(
    profile: str,
    overrides: tuple[str, ...],
    base_image: str | None,
    wheelhouse: str | None,
    ca_cert: str | None,
    find_links: tuple[str, ...],
    extra_index_url: tuple[str, ...],
    template_dir: str | None,
    tags: tuple[str, ...],
    no_cache: bool,
    pull: bool,
    build_args: tuple[tuple[str, str], ...],
    network: str | None,
    context_dir: str | None,
    quiet: bool,
    as_json: bool,
    reproducible: bool,
    locked: bool,
    push: bool,
    username: str | None,
    password_stdin: bool,
) -> None:
    """Render PROFILE's build context and build its image.

    Progress goes to stderr (a live display on a terminal, plain lines otherwise);
    the build record (plan, base, packages, steps) is written under .aibuild/builds/.
    """
    from aibuild.build import BuildSettings, build_image, reporter_for
    from aibuild.cli_publish import after_build, prepare_build, publish_settings

    publishing = publish_settings(reproducible, locked, push, username, password_stdin)
    options = render_options_from(
        base_image, wheelhouse, ca_cert, find_links, extra_index_url, template_dir
    )
    prepared = prepare_build(profile, overrides, options, publishing)
    settings = BuildSettings(
        tags=tags,
        nocache=no_cache,
        pull=pull,
        build_args=build_args,
        network_mode=network,
        context_dir=context_dir,
    )
    result = build_image(
        profile, overrides, prepared.options, settings, reporter_for(sys.stderr, quiet=quiet)
    )
    published = after_build(result, prepared, publishing, quiet=quiet or as_json)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), **published.to_dict()}, indent=2))
    elif quiet:
        click.echo(published.image_id)
    else:
        steps = len(result.steps)
        click.echo(
            f"built {result.image_id.removeprefix('sha256:')[:12]} in {result.duration:.1f}s "
            f"({result.cache_hits}/{steps} steps cached)"
        )
        for tag in result.tags:
            click.echo(f"tagged {tag}")
        click.echo(f"build record: {result.record_path}")
        for line in published.lines:
            click.echo(line)


def _gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from aibuild.run import parse_gpus

    if value is None:
        return None
    try:
        return ("set", parse_gpus(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _env(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from aibuild.run import env_pairs

    try:
        return tuple(env_pairs(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _labels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    pairs = []
    for item in value:
        key, _, val = item.partition("=")
        if not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        pairs.append((key, val))
    return tuple(pairs)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    short_help="Run a profile's image (or any image) with GPU passthrough.",
)
@click.argument("target", metavar="[PROFILE | IMAGE]", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@set_option
@click.option(
    "--gpus",
    callback=_gpus,
    metavar="all|N|device=0,1|none",
    help="GPUs to pass through, as docker run --gpus. Default: the profile's run.gpus.",
)
@click.option("--shm-size", metavar="SIZE", help="/dev/shm size. Default: the profile's.")
@click.option("--ipc", metavar="MODE", help="IPC namespace (e.g. host) instead of --shm-size.")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="Dataset directory, mounted read-only at /data (AIBUILD_DATA=/data).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Output directory, mounted at /output; the run uses your uid:gid so you own the files.",
)
@click.option(
    "-e", "--env", multiple=True, callback=_env, metavar="KEY=VALUE", help="Set a variable."
)
@click.option("--name", help="Container name.")
@click.option(
    "--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE", help="Label."
)
@click.option(
    "-d", "--detach", is_flag=True, help="Start and return; the engine removes it on exit."
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    help="Run the trainer under torchrun with N processes.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL on Ctrl-C.",
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
    grace: float,
) -> None:
    """Run a profile's image (its image_ref) or any IMAGE; exit with the container's code.

    ARGS after `--` that start with `-` are trainer flags (`-- --epochs 1`); other ARGS
    replace the entrypoint (`-- python -c "import torch"`). Without a target, the last
    image built in this directory runs.
    """
    from aibuild.run import RunOptions, container_command, parse_gpus, resolve_target, run_container

    try:
        container_command(args, nproc_per_node)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    resolved = resolve_target(target, overrides)
    plan = resolved.plan
    if gpus is not None:
        gpu_request = gpus[1]
    else:
        gpu_request = parse_gpus(plan.run_gpus) if plan is not None else None
    options = RunOptions(
        args=args,
        gpus=gpu_request,
        shm_size=shm_size or (plan.run_shm_size if plan is not None else None),
        ipc=ipc,
        data=data,
        output=output,
        env=env,
        name=name,
        labels=labels,
        detach=detach,
        nproc_per_node=nproc_per_node,
        grace_s=grace,
    )
    code = run_container(resolved, options)
    sys.exit(code)


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

    plan = None
    if profile is not None:
        from aibuild.resolve import plan_for

        plan = plan_for(profile, overrides)
    report = diagnose(plan)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(format_report(report))
    if not report.ok:
        ctx.exit(1)


@click.command()
@profile_argument
@set_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to fill with wheels (created).",
)
@find_links_option
@extra_index_option
@json_option
def wheelhouse(
    profile: str,
    overrides: tuple[str, ...],
    output: str,
    find_links: tuple[str, ...],
    extra_index_url: tuple[str, ...],
    as_json: bool,
) -> None:
    """Download every wheel PROFILE's image installs (its platform and Python) into a directory.

    Use it with `aibuild image PROFILE --wheelhouse DIR` on a machine without network.
    """
    from aibuild.resolve import plan_for
    from aibuild.wheelhouse import download_wheelhouse

    plan = plan_for(profile, overrides)
    result = download_wheelhouse(
        plan,
        Path(output),
        extra_index_urls=extra_index_url,
        find_links=find_links,
        echo=not as_json,
    )
    if as_json:
        click.echo(
            json.dumps({"directory": str(result.directory), "wheels": result.wheels}, indent=2)
        )
    else:
        click.echo(f"{len(result.wheels)} wheels in {result.directory}")
        for wheel in result.wheels:
            click.echo(f"  {wheel}")
