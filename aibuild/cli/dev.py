"""``aibuild shell``, ``aibuild jupyter`` and ``aibuild devcontainer``: parse, call, print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from aibuild.cli.options import profile_argument, set_option
from aibuild.cli.run import (
    container_options,
    data_option,
    env_option,
    gpus_option,
    run_console,
    shm_size_option,
)

SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=SETTINGS)
@click.argument("target", metavar="[PROFILE | IMAGE]", required=False)
@set_option
@gpus_option
@shm_size_option
@data_option
@env_option
def shell(
    target: str | None,
    overrides: tuple[str, ...],
    gpus: Any,
    shm_size: str | None,
    data: str | None,
    env: tuple[tuple[str, str], ...],
) -> None:
    """An interactive bash in the image, like docker run -it: a real terminal that follows
    resizes; Ctrl-C goes to the program in front, Ctrl-D (or `exit N`) ends the session.

    Runs as your uid with HOME=/tmp, GPUs as the profile says (--gpus), the profile's
    project bind-mounted live at its workdir; exits with the shell's code and removes the
    container. Needs a terminal.
    """
    from aibuild.run.interactive import run_shell

    options = container_options(gpus=gpus, shm_size=shm_size, data=data, env=env)
    sys.exit(run_shell(target, overrides, options, run_console()))


@click.command(context_settings=SETTINGS)
@profile_argument
@set_option
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Port on 127.0.0.1 (default: a free one); a port that is taken is an error.",
)
@gpus_option
@shm_size_option
@data_option
@env_option
def jupyter(
    profile: str,
    overrides: tuple[str, ...],
    port: int | None,
    gpus: Any,
    shm_size: str | None,
    data: str | None,
    env: tuple[tuple[str, str], ...],
) -> None:
    """JupyterLab in PROFILE's dev image (dev.jupyter: true), with the project mounted live.

    Listens on 127.0.0.1 only, with a fresh token: prints the URL to open once it answers.
    Ctrl-C stops it and removes the container.
    """
    from aibuild.run.jupyter import run_jupyter

    options = container_options(gpus=gpus, shm_size=shm_size, data=data, env=env)
    sys.exit(run_jupyter(profile, overrides, options, run_console(), port=port))


@click.command(context_settings=SETTINGS)
@profile_argument
@set_option
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder your editor opens (default: the profile's project folder, else the "
    "current directory); the file goes to WORKSPACE/.devcontainer/devcontainer.json.",
)
@gpus_option
@shm_size_option
@data_option
def devcontainer(
    profile: str,
    overrides: tuple[str, ...],
    workspace: Path | None,
    gpus: Any,
    shm_size: str | None,
    data: str | None,
) -> None:
    """Write .devcontainer/devcontainer.json for PROFILE's image (VS Code, PyCharm, the
    Dev Containers CLI): the image, GPUs and run defaults, the project at its workdir.

    Replaces only a file aibuild wrote; the image must be built (aibuild image PROFILE).
    """
    from aibuild.run.devcontainer import make_devcontainer

    path = make_devcontainer(
        profile,
        overrides,
        workspace=workspace,
        gpus=gpus[1] if gpus is not None else None,
        gpus_given=gpus is not None,
        shm_size=shm_size,
        data=Path(data) if data else None,
        say=lambda text: click.echo(text, err=True),
    )
    click.echo(f"wrote {path}")
    click.echo(
        f"open {path.parent.parent} in VS Code and choose 'Reopen in Container', or: "
        f"devcontainer up --workspace-folder {path.parent.parent}",
        err=True,
    )
