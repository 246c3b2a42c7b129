"""``aibuild image`` and ``aibuild wheelhouse``: parse, call the pipeline, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from aibuild.cli.options import (
    compression_option,
    extra_index_option,
    find_links_option,
    json_option,
    password_stdin_option,
    profile_argument,
    read_password,
    render_options,
    render_options_from,
    set_option,
    stderr_log,
    timeout_option,
    username_option,
)


def _build_args(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from aibuild.image.build import parse_build_args

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
@click.option(
    "--reproducible",
    is_flag=True,
    help="Bit-identical rebuilds: render for reproducibility, add the SBOM, "
    "normalise layers and config (SOURCE_DATE_EPOCH from the lock, "
    "$SOURCE_DATE_EPOCH or the profile's git commit time).",
)
@click.option(
    "--locked",
    is_flag=True,
    help="Build from <profile>.lock.json (aibuild lock): exact pins and build "
    "time; fails when the profile changed since.",
)
@click.option(
    "--push",
    "push",
    is_flag=True,
    help="Push the image to its registry (the profile's image.name) and print NAME@sha256:DIGEST.",
)
@username_option
@password_stdin_option
@compression_option
@timeout_option
def image(
    profile: str,
    overrides: tuple[str, ...],
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
    timeout: float | None,
    compression: str | None,
    **render: Any,
) -> None:
    """Render PROFILE's build context and build its image (then normalise and push it).

    Progress goes to stderr (a live display on a terminal, plain lines otherwise);
    the build record (plan, base, packages, steps) is written under .aibuild/builds/.
    """
    from aibuild.image.build import BuildSettings
    from aibuild.image.progress import reporter_for
    from aibuild.pipeline import ImageRequest, PublishSettings, make_image

    request = ImageRequest(
        profile=profile,
        overrides=overrides,
        options=render_options_from(**render),
        build=BuildSettings(
            tags=tags,
            nocache=no_cache,
            pull=pull,
            build_args=build_args,
            network_mode=network,
            context_dir=context_dir,
        ),
        publish=PublishSettings(
            reproducible=reproducible,
            locked=locked,
            push=push,
            username=username,
            password=read_password(username, password_stdin),  # now, not after the build
            timeout=timeout,
            compression=compression,
        ),
    )
    result = make_image(
        request,
        reporter=reporter_for(sys.stderr, quiet=quiet),
        log=stderr_log(quiet or as_json),
    )
    built = result.build
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif quiet:
        click.echo(result.image_id)
    else:
        click.echo(
            f"built {built.image_id.removeprefix('sha256:')[:12]} in {built.duration:.1f}s "
            f"({built.cache_hits}/{len(built.steps)} steps cached)"
        )
        for tag in built.tags:
            click.echo(f"tagged {tag}")
        if built.dev_image:
            click.echo(f"tagged {built.dev_image['tag']} (the dev image: plus JupyterLab)")
        click.echo(f"build record: {built.record_path}")
        if result.normalised is not None:
            click.echo(
                f"reproducible image {result.image_id} (normalised in "
                f"{result.normalised.seconds:.1f}s, SOURCE_DATE_EPOCH "
                f"{result.normalised.source_date_epoch})"
            )
        for pushed in result.pushes:
            click.echo(pushed.pinned)


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
    from aibuild.image.wheelhouse import download_wheelhouse
    from aibuild.profile.resolve import plan_for

    plan = plan_for(profile, overrides)
    result = download_wheelhouse(
        plan,
        Path(output),
        extra_index_urls=extra_index_url,
        find_links=find_links,
        echo=not as_json,
        log=stderr_log(quiet=False),
    )
    if as_json:
        click.echo(
            json.dumps({"directory": str(result.directory), "wheels": result.wheels}, indent=2)
        )
    else:
        click.echo(f"{len(result.wheels)} wheels in {result.directory}")
        for wheel in result.wheels:
            click.echo(f"  {wheel}")
