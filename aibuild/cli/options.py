"""Options shared by several commands, defined once (pip-tools' scripts/options.py habit)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from aibuild.errors import PublishError

F = TypeVar("F", bound=Callable[..., Any])

profile_argument = click.argument("profile", metavar="PROFILE")

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a profile value, e.g. --set software.torch=2.5.1 (repeatable). "
    "VALUE is parsed as YAML.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

base_image_option = click.option(
    "--base-image",
    metavar="IMAGE",
    help="Build FROM this image instead of the profile's (distro and Python are detected).",
)
wheelhouse_option = click.option(
    "--wheelhouse",
    type=click.Path(exists=True, file_okay=False),
    help="Install Python packages from this directory of wheels (not kept in the image).",
)
ca_cert_option = click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="A PEM CA bundle trusted during the build only (e.g. a TLS-intercepting proxy).",
)
find_links_option = click.option(
    "--find-links", multiple=True, metavar="URL", help="Extra pip --find-links (repeatable)."
)
extra_index_option = click.option(
    "--extra-index-url", multiple=True, metavar="URL", help="Extra pip index URL (repeatable)."
)
template_dir_option = click.option(
    "--template-dir",
    type=click.Path(exists=True, file_okay=False),
    help="A directory of templates overriding the shipped blocks (Jinja inheritance).",
)


def render_options(func: F) -> F:
    """All the options that shape a build context without changing the profile."""
    for option in reversed(
        [
            base_image_option,
            wheelhouse_option,
            ca_cert_option,
            find_links_option,
            extra_index_option,
            template_dir_option,
        ]
    ):
        func = option(func)
    return func


def render_options_from(
    base_image: str | None,
    wheelhouse: str | None,
    ca_cert: str | None,
    find_links: tuple[str, ...],
    extra_index_url: tuple[str, ...],
    template_dir: str | None,
) -> Any:
    """The RenderOptions that the ``render_options`` decorator's values describe
    (paths made absolute, so a build context written elsewhere still finds them)."""
    from pathlib import Path

    from aibuild.profile.plan import RenderOptions

    return RenderOptions(
        base_image=base_image,
        wheelhouse=str(Path(wheelhouse).resolve()) if wheelhouse else None,
        ca_cert=str(Path(ca_cert).resolve()) if ca_cert else None,
        find_links=tuple(find_links),
        extra_index_urls=tuple(extra_index_url),
        template_dir=template_dir,
    )


# ---------------------------------------------------------------------------
# Registry login and publishing options (aibuild image, aibuild push)
# ---------------------------------------------------------------------------

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
    type=click.IntRange(min=1),
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


compression_option = click.option(
    "--compression",
    type=click.Choice(["gzip", "zstd"]),
    default=None,
    help="Layer compression of aibuild's own push (direct): gzip (default; every engine "
    "pulls it) or zstd (OCI +zstd layers: Docker 23 or newer). Default: the profile's "
    "image.compression, else gzip.",
)
timeout_option = click.option(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="The most one push (to one target) may take in all, export and retries included. "
    "Default: $AIBUILD_PUSH_TIMEOUT, else 1800.",
)


def stderr_log(quiet: bool, *, live: bool | None = None) -> Callable[[str], None]:
    """A progress callback that writes lines to stderr: with ``quiet``, only the lines that
    start with ``warning:`` (what the user must know, such as a record left as it was).

    Meters' lines (export, compress and upload run at once) make one status line of every
    phase still going, ``export: ... | compress (zstd): ... | upload: ...``: drawn in place
    on a terminal (``live``; default: whether stderr is one), cut to its width, else
    printed every 5 s. A phase leaves it with its closing line (an ordinary one)."""
    import shutil
    import threading
    import time

    from aibuild.oci.meter import PROGRESS

    live = sys.stderr.isatty() if live is None else live
    shown = [0.0]  # when the last progress line was printed (in a pipe)
    drawn = [False]  # whether a progress line is drawn in place (on a terminal)
    going: dict[str, str] = {}  # phase -> its latest progress line
    lock = threading.Lock()  # meters report from worker threads

    def log(text: str) -> None:
        if quiet and not text.startswith("warning:"):
            return
        with lock:
            if text.startswith(PROGRESS):
                line = text.removeprefix(PROGRESS)
                going[line.split(":", 1)[0]] = line
                status = " | ".join(going.values())
                now = time.monotonic()
                if live:
                    width = shutil.get_terminal_size().columns - 1
                    click.echo("\r\033[K" + status[:width], err=True, nl=False)
                    drawn[0] = True
                elif now - shown[0] >= 5.0:
                    shown[0] = now
                    click.echo(status, err=True)
                return
            going.pop(text.split(":", 1)[0], None)
            if drawn[0]:
                click.echo("\r\033[K", err=True, nl=False)
                drawn[0] = False
            click.echo(text, err=True)

    return log
