"""The command line: a thin layer over the library API.

Each command lives beside the stage it drives and is imported only when it is
invoked, so ``aibuild --help`` never imports docker, torch or jinja2.
Every ``AibuildError`` becomes its message on stderr and exit code 1; click's
usage errors exit 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from aibuild import __version__
from aibuild.errors import AibuildError

# name -> ("module", "attribute", "one-line help shown by --help without importing")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "profiles": ("aibuild.cli.profile", "profiles", "List the built-in profiles."),
    "check": (
        "aibuild.cli.profile",
        "check",
        "Validate a profile and show its resolved build plan.",
    ),
    "render": (
        "aibuild.cli.profile",
        "render",
        "Render a profile's Dockerfile or whole build context.",
    ),
    "image": ("aibuild.cli.image", "image", "Render and build a profile's image (and push it)."),
    "wheelhouse": (
        "aibuild.cli.image",
        "wheelhouse",
        "Download every wheel a profile's image needs.",
    ),
    "run": (
        "aibuild.cli.run",
        "run",
        "Run a profile's image (or any image) with GPU passthrough.",
    ),
    "shell": (
        "aibuild.cli.dev",
        "shell",
        "An interactive shell in a profile's image (project mounted live).",
    ),
    "jupyter": (
        "aibuild.cli.dev",
        "jupyter",
        "JupyterLab in a profile's dev image, on 127.0.0.1.",
    ),
    "devcontainer": (
        "aibuild.cli.dev",
        "devcontainer",
        "Write .devcontainer/devcontainer.json for VS Code / PyCharm.",
    ),
    "doctor": (
        "aibuild.cli.run",
        "doctor",
        "Check this host (engine, driver, GPUs) against a profile.",
    ),
    "export": (
        "aibuild.cli.cluster",
        "export",
        "Write a cluster job: Slurm sbatch script, Kubernetes objects, Compose file.",
    ),
    "submit": ("aibuild.cli.cluster", "submit", "Write a Slurm job and submit it with sbatch."),
    "push": ("aibuild.cli.publish", "push", "Push an image to its registry and print its digest."),
    "lock": ("aibuild.cli.publish", "lock", "Pin a profile's base image, packages and build time."),
    "diff": ("aibuild.cli.publish", "diff", "Show what differs between two images."),
    "train": ("aibuild.train.cli", "train", "Train a model (the image's entrypoint)."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not self._available(cmd_name):
            return None
        module = importlib.import_module(entry[0])
        command = getattr(module, entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AibuildError as exc:
            click.echo(exc.format(), err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aibuild")
def cli() -> None:
    """aibuild: declarative, CUDA-aware container images for AI training.

    Describe the environment once as a YAML profile; aibuild validates it
    against real compatibility facts, renders a multi-stage Dockerfile, builds
    and runs it with GPU passthrough, and publishes it reproducibly.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="aibuild")
    except KeyboardInterrupt:  # pragma: no cover - click turns most into Abort
        click.echo("Aborted.", err=True)
        sys.exit(130)
