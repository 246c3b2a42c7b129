"""``aibuild push``, ``aibuild lock``, ``aibuild diff``: parse, call the pipeline, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from aibuild.bounds import BOUNDS
from aibuild.cli.options import (
    compression_option,
    epoch_option,
    json_option,
    password_stdin_option,
    profile_argument,
    read_password,
    render_options,
    render_options_from,
    retries_option,
    set_option,
    stderr_log,
    timeout_option,
    username_option,
)


@click.command()
@click.argument("image", metavar="IMAGE")
@click.option(
    "--to",
    "targets",
    multiple=True,
    metavar="REGISTRY/NAME:TAG",
    help="Push under this name instead of IMAGE's own (repeatable).",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "direct", "engine"]),
    default="auto",
    show_default=True,
    help="direct: aibuild uploads deterministic gzip layers itself (owns the digest); "
    "engine: docker push; auto: direct for reproducible images, else engine.",
)
@click.option(
    "--reproducible",
    is_flag=True,
    help="Normalise the image first (see `aibuild image --reproducible`), then push direct.",
)
@click.option("--base-image", metavar="IMAGE", help="With --reproducible: the image's base.")
@epoch_option
@username_option
@password_stdin_option
@retries_option
@compression_option
@timeout_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the pinned reference.")
@json_option
def push(
    image: str,
    targets: tuple[str, ...],
    method: str,
    reproducible: bool,
    base_image: str | None,
    epoch: int | None,
    username: str | None,
    password_stdin: bool,
    retries: int,
    timeout: float | None,
    compression: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Push IMAGE (a built profile's image, or a local image) and print NAME@sha256:DIGEST.

    Credentials: --username with --password-stdin, else AIBUILD_REGISTRY_USER and
    AIBUILD_REGISTRY_PASSWORD, else the Docker config file and its credential
    helpers. Transient failures are retried with backoff, within --timeout; the
    manifest goes last, so a failed push never moves a tag, and no local tag is moved
    or left behind by a failed push.
    """
    from aibuild.pipeline import PublishSettings, push_image

    settings = PublishSettings(
        username=username,
        password=read_password(username, password_stdin),
        retries=retries,
        timeout=timeout,
        compression=compression,
    )
    log = stderr_log(quiet or as_json)
    results = push_image(
        image,
        targets,
        method=method,
        settings=settings,
        reproducible=reproducible,
        base_image=base_image,
        epoch=epoch,
        log=log,
    )
    if as_json:
        payload = [
            {
                "ref": str(r.reference),
                "image_id": r.image_id,
                "digest": r.digest,
                "pinned": r.pinned,
                "method": r.method,
                "layers_pushed": r.layers_pushed,
                "layers_existing": r.layers_existing,
                "seconds": r.seconds,
            }
            for r in results
        ]
        click.echo(json.dumps(payload, indent=2))
        return
    for result in results:
        click.echo(result.pinned)


@click.command()
@profile_argument
@set_option
@render_options
@click.option(
    "--image",
    metavar="IMAGE",
    help="Read the versions from this built image instead of the newest recorded build "
    "(or a fresh build when there is none).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Lock file to write. Default: <profile>.lock.json beside the profile "
    "(a built-in profile's in the current directory).",
)
@epoch_option
@json_option
def lock(
    profile: str,
    overrides: tuple[str, ...],
    image: str | None,
    output: str | None,
    epoch: int | None,
    as_json: bool,
    **render: Any,
) -> None:
    """Pin PROFILE's base image, every Python and OS package version and the build time.

    The versions are read inside a built image of the profile (pip freeze and
    dpkg-query); wheel hashes come from --wheelhouse. `aibuild image --locked`
    then builds from the lock, and fails when the profile has changed since.
    """
    from aibuild.image.progress import reporter_for
    from aibuild.pipeline import lock_profile

    path, data = lock_profile(
        profile,
        overrides,
        render_options_from(**render),
        image=image,
        output=Path(output) if output else None,
        epoch=epoch,
        reporter=reporter_for(sys.stderr, quiet=as_json),
    )
    if as_json:
        click.echo(json.dumps({"path": str(path), **data}, indent=2, sort_keys=True))
        return
    hashed = sum(1 for p in data["python"] if p.get("sha256"))
    click.echo(
        f"wrote {path}: {len(data['python'])} Python packages ({hashed} with wheel hashes), "
        f"{len(data['os'])} OS packages, base {data['runtime_image'].get('id') or '?'}, "
        f"SOURCE_DATE_EPOCH {data['source_date_epoch']} ({data['source_date_epoch_from']})"
    )


@click.command()
@click.argument("image_a", metavar="IMAGE_A")
@click.argument("image_b", metavar="IMAGE_B")
@click.option(
    "--max-files",
    type=click.IntRange(BOUNDS["diff_files"].low, BOUNDS["diff_files"].high),
    default=50,
    show_default=True,
    help="Files shown per layer.",
)
@click.option("--exit-code", is_flag=True, help="Exit 1 when the images differ (like `git diff`).")
@json_option
def diff(image_a: str, image_b: str, max_files: int, exit_code: bool, as_json: bool) -> None:
    """Show what differs between two local images: config fields, layers and files
    (path, size, mode, owner, mtime, content hash), to find why two builds differ."""
    from aibuild.engine import get_client
    from aibuild.publish.diff import diff_images, format_diff

    result = diff_images(get_client(), image_a, image_b)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        click.echo(format_diff(result, max_files=max_files))
    if exit_code and not result.identical:
        sys.exit(1)
