"""The publishing commands: ``push``, ``lock``, ``diff``; and the publishing half of
``aibuild image`` (``--reproducible``, ``--locked``, ``--push``).

Each command parses its options, calls the library (publish, lock, diff,
reproducible) and prints: progress on stderr, the result on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from aibuild.cli_options import json_option, profile_argument, render_options, set_option
from aibuild.errors import PublishError


def _log(quiet: bool) -> Callable[[str], None]:
    def log(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    return log


def _retry(retries: int) -> Any:
    from aibuild.publish import RetryPolicy

    if retries < 1:
        raise click.BadParameter("must be at least 1", param_hint="--retries")
    return RetryPolicy(attempts=retries)


def read_password(username: str | None, password_stdin: bool) -> str | None:
    """The password given on stdin (``--password-stdin``), read once, before any work."""
    if password_stdin:
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise PublishError("--password-stdin: nothing was read from stdin")
        return password
    if username:
        raise click.UsageError("--username needs --password-stdin (passwords never go in argv)")
    return None


username_option = click.option(
    "--username",
    "-u",
    metavar="USER",
    help="Registry user (with --password-stdin). Default: AIBUILD_REGISTRY_USER/"
    "AIBUILD_REGISTRY_PASSWORD, else the Docker config (docker login, credential helpers).",
)
password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the registry password from stdin."
)
retries_option = click.option(
    "--retries",
    type=int,
    default=8,
    show_default=True,
    help="Attempts per request for transient failures (backoff 0.5s doubling, at most 10s).",
)
epoch_option = click.option(
    "--source-date-epoch",
    "epoch",
    type=int,
    metavar="SECONDS",
    help="Build time for reproducible mode. Default: the lock's, $SOURCE_DATE_EPOCH, "
    "the profile's git commit time, or the start of today (UTC).",
)


# ---------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------


def _local_image(client: Any, ref: str) -> Any:
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise PublishError(f"cannot look up {ref}: {exc}") from None


def _image_for(client: Any, ref: str) -> tuple[str, str | None]:
    """(local image, push target) for an image reference or a profile."""
    if _local_image(client, ref) is not None:
        return ref, None
    from aibuild.errors import ProfileError
    from aibuild.resolve import plan_for

    try:
        plan = plan_for(ref)
    except ProfileError:
        raise PublishError(f"no image {ref} on this engine (and no profile of that name)") from None
    if _local_image(client, plan.image_ref) is None:
        raise PublishError(
            f"profile {ref} names the image {plan.image_ref}, which is not on this engine: "
            f"build it first (aibuild image {ref})"
        )
    return plan.image_ref, plan.image_ref


def do_push(
    client: Any,
    image: str,
    targets: tuple[str, ...],
    *,
    method: str,
    username: str | None,
    password: str | None,
    retries: int,
    log: Callable[[str], None],
    record_dir: Path | None = None,
) -> list[Any]:
    """Push ``image`` to every target (default: its own name); record the digests."""
    from aibuild.build import RECORD_DIR
    from aibuild.publish import (
        find_records,
        parse_reference,
        push,
        record_push,
        resolve_credentials,
    )

    found = client.images.get(image)
    names = list(targets) or [image]
    results = []
    for target in names:
        ref = parse_reference(target)
        if ref.registry == "docker.io" and "/" not in target.split(":")[0]:
            raise PublishError(
                f"{target} has no registry part: tag it for a registry "
                "(REGISTRY/NAME:TAG, e.g. with --to) before pushing"
            )
        credentials = resolve_credentials(ref.registry, username=username, password=password)
        result = push(
            client,
            found.id,
            str(ref),
            method=method,
            credentials=credentials,
            retry=_retry(retries),
            log=log,
        )
        for record in find_records(found.id, record_dir or RECORD_DIR)[:1]:
            record_push(record, result)
            log(f"digest recorded in {record}")
        results.append(result)
    return results


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
    quiet: bool,
    as_json: bool,
) -> None:
    """Push IMAGE (a local image, or a built profile's image) and print NAME@sha256:DIGEST.

    Credentials: --username with --password-stdin, else AIBUILD_REGISTRY_USER and
    AIBUILD_REGISTRY_PASSWORD, else the Docker config file and its credential
    helpers. Transient failures are retried with backoff; the manifest goes last,
    so a failed push never moves a tag.
    """
    from aibuild.engine import get_client

    password = read_password(username, password_stdin)
    client = get_client()
    log = _log(quiet or as_json)
    local, target = _image_for(client, image)
    if target and not targets:
        targets = (target,)
    if reproducible:
        from aibuild.lock import choose_epoch
        from aibuild.reproducible import normalise_image

        when, source = choose_epoch(None, epoch)
        log(f"SOURCE_DATE_EPOCH={when} ({source})")
        normalised = normalise_image(
            client, local, source_date_epoch=when, base=base_image, log=log
        )
        local = normalised.image_id
        if not targets:
            targets = (image,)
        method = "direct" if method == "auto" else method
    results = do_push(
        client,
        local,
        targets,
        method=method,
        username=username,
        password=password,
        retries=retries,
        log=log,
    )
    if as_json:
        payload = [
            {
                "ref": str(r.reference),
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


# ---------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------


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
    base_image: str | None,
    wheelhouse: str | None,
    ca_cert: str | None,
    find_links: tuple[str, ...],
    extra_index_url: tuple[str, ...],
    template_dir: str | None,
    image: str | None,
    output: str | None,
    epoch: int | None,
    as_json: bool,
) -> None:
    """Pin PROFILE's base image, every Python and OS package version and the build time.

    The versions are read inside a built image of the profile (pip freeze and
    dpkg-query); wheel hashes come from --wheelhouse. `aibuild image --locked`
    then builds from the lock, and fails when the profile has changed since.
    """
    from aibuild.build import reporter_for
    from aibuild.cli_options import render_options_from
    from aibuild.lock import lock_profile

    options = render_options_from(
        base_image, wheelhouse, ca_cert, find_links, extra_index_url, template_dir
    )
    path, data = lock_profile(
        profile,
        overrides,
        options,
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


# ---------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------


@click.command()
@click.argument("image_a", metavar="IMAGE_A")
@click.argument("image_b", metavar="IMAGE_B")
@click.option("--max-files", type=int, default=50, show_default=True, help="Files shown per layer.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when the images differ (like `git diff`).")
@json_option
def diff(image_a: str, image_b: str, max_files: int, exit_code: bool, as_json: bool) -> None:
    """Show what differs between two local images: config fields, layers and files
    (path, size, mode, owner, mtime, content hash), to find why two builds differ."""
    from aibuild.diff import diff_images, format_diff
    from aibuild.engine import get_client

    result = diff_images(get_client(), image_a, image_b)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        click.echo(format_diff(result, max_files=max_files))
    if exit_code and not result.identical:
        sys.exit(1)


# ---------------------------------------------------------------------------
# The publishing half of `aibuild image`
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishSettings:
    """What ``aibuild image`` was asked to do beyond building."""

    reproducible: bool = False
    locked: bool = False
    push: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    retries: int = 8

    @property
    def active(self) -> bool:
        return self.reproducible or self.locked or self.push


def publish_options(func: Any) -> Any:
    """The options ``aibuild image`` takes for publishing (defined here, with their code)."""
    for option in reversed(
        [
            click.option(
                "--reproducible",
                is_flag=True,
                help="Bit-identical rebuilds: render for reproducibility, add the SBOM, "
                "normalise layers and config (SOURCE_DATE_EPOCH from the lock, "
                "$SOURCE_DATE_EPOCH or the profile's git commit time).",
            ),
            click.option(
                "--locked",
                is_flag=True,
                help="Build from <profile>.lock.json (aibuild lock): exact pins and build "
                "time; fails when the profile changed since.",
            ),
            click.option(
                "--push",
                "push",
                is_flag=True,
                help="Push the image to its registry (the profile's image.name) and print "
                "NAME@sha256:DIGEST.",
            ),
            username_option,
            password_stdin_option,
        ]
    ):
        func = option(func)
    return func


def publish_settings(
    reproducible: bool, locked: bool, push: bool, username: str | None, password_stdin: bool
) -> PublishSettings:
    """The settings from ``publish_options``' values; reads the password now, not after
    a build that takes minutes."""
    return PublishSettings(
        reproducible=reproducible,
        locked=locked,
        push=push,
        username=username,
        password=read_password(username, password_stdin),
    )


@dataclass
class Prepared:
    """Render options for the build, and what ``after_build`` needs to finish."""

    profile: str
    options: Any
    epoch: int | None
    lock: dict[str, Any] | None
    lock_path: Path | None


def prepare_build(
    profile: str, overrides: tuple[str, ...], options: Any, settings: PublishSettings
) -> Prepared:
    """Before the build: read and check the lock (``--locked``), pick SOURCE_DATE_EPOCH
    and turn on the renderer's reproducible mode (``--reproducible``)."""
    from aibuild.lock import (
        check_lock,
        choose_epoch,
        default_lock_path,
        locked_options,
        profile_file,
        read_lock,
    )

    lock_data = lock_path = None
    epoch = None
    if settings.locked:
        from aibuild.build import resolve_for_build
        from aibuild.engine import get_client

        lock_path = default_lock_path(profile)
        lock_data = read_lock(lock_path)
        client = get_client()
        plan, _, _ = resolve_for_build(client, profile, overrides, options)
        base = _local_image(client, plan.runtime_image)
        check_lock(lock_data, plan, lock_path, base.id if base is not None else None)
        options = locked_options(lock_data, options)
        epoch = int(lock_data["source_date_epoch"])
    if settings.reproducible:
        if epoch is None:
            epoch, _ = choose_epoch(profile_file(profile))
        options = replace(options, reproducible=True, source_date_epoch=epoch)
    return Prepared(profile, options, epoch, lock_data, lock_path)


@dataclass
class Published:
    """What the publishing half did: the final image, pinned references, lines to print."""

    image_id: str
    pinned: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"final_image_id": self.image_id, "pushed": self.pinned}


def after_build(
    result: Any, prepared: Prepared, settings: PublishSettings, *, quiet: bool = False
) -> Published:
    """After the build: check OS versions against the lock, add the SBOM and normalise
    (``--reproducible``), push (``--push``)."""
    published = Published(result.image_id)
    if not settings.active:
        return published
    from aibuild.engine import get_client
    from aibuild.lock import check_os_packages, profile_file, source_labels
    from aibuild.publish import BlobCache
    from aibuild.reproducible import finish_reproducible

    log = _log(quiet)
    client = get_client()
    if prepared.lock is not None:
        drift = check_os_packages(prepared.lock, result.os_packages)
        if drift:
            log(f"warning: {len(drift)} OS package(s) differ from {prepared.lock_path}:")
            for line in drift[:20]:
                log(f"  {line}")
    if settings.reproducible:
        assert prepared.epoch is not None
        wheelhouse = prepared.options.wheelhouse
        normalised = finish_reproducible(
            client,
            result,
            source_date_epoch=prepared.epoch,
            labels=source_labels(profile_file(prepared.profile)),
            wheelhouse=Path(wheelhouse) if wheelhouse else None,
            # Pushing next: gzip the layers while they are at hand, not after a second export.
            cache=BlobCache() if settings.push else None,
            log=log,
        )
        published.image_id = normalised.image_id
        published.lines.append(
            f"reproducible image {normalised.image_id} (normalised in "
            f"{normalised.seconds:.1f}s, SOURCE_DATE_EPOCH {prepared.epoch})"
        )
    if settings.push:
        results = do_push(
            client,
            published.image_id,
            (result.plan.image_ref,),
            method="direct" if settings.reproducible else "auto",
            username=settings.username,
            password=settings.password,
            retries=settings.retries,
            log=log,
            record_dir=result.record_path.parent,
        )
        published.pinned = [r.pinned for r in results]
        published.lines.extend(published.pinned)
    return published


__all__ = [
    "Prepared",
    "PublishSettings",
    "Published",
    "after_build",
    "diff",
    "do_push",
    "lock",
    "prepare_build",
    "publish_options",
    "publish_settings",
    "push",
]
