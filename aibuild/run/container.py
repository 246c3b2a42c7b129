"""``aibuild run``: resolve what to run, give it its profile's run defaults and a place for
its results, and run it: one container (``lifecycle.run_container``), or attached to this
terminal (``interactive.run_interactive``) for ``-i``/``-t``.

The parts: ``config`` (what runs and how, pure), ``lifecycle`` (the container's life,
signals, orphans), ``interactive`` (sessions on this terminal); ``multinode`` runs
``--nodes N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from aibuild import labels
from aibuild.engine import client_session
from aibuild.logs import Log
from aibuild.run import terminal
from aibuild.run.config import (
    ContainerOptions,
    RunTarget,
    resolve_target,
    runs_trainer,
    with_plan_defaults,
)
from aibuild.run.interactive import run_interactive
from aibuild.run.lifecycle import Console, make_output_dir, run_container

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

DEFAULT_OUTPUT_ROOT = Path("aibuild-output")  # where training results go without --output


def with_default_output(
    client: docker.DockerClient, options: ContainerOptions, target: RunTarget, say: Log
) -> ContainerOptions:
    """``options``, with an output directory on the host when the run trains in an aibuild
    image and none was given: ``./aibuild-output/<profile>-<UTC time>``. Said before the
    run starts, so results (checkpoints, metrics, the final weights) are never trained
    into a container that is then removed."""
    import docker as docker_module

    if options.output is not None or not runs_trainer(options):
        return options
    try:
        image_labels = client.images.get(target.image).attrs["Config"].get("Labels") or {}
    except docker_module.errors.DockerException:
        return options  # not on this engine: run_container says so
    profile = image_labels.get(labels.PROFILE)
    if not profile:
        return options  # not an aibuild image: its entrypoint is not the trainer
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    output = DEFAULT_OUTPUT_ROOT / f"{profile}-{stamp}"
    say(f"aibuild: no --output: the results go to {output} (--output DIR to choose)")
    return replace(options, output=str(output))


def run_image(
    ref: str | None,
    overrides: Sequence[str],
    options: ContainerOptions,
    console: Console,
    *,
    client: docker.DockerClient | None = None,
) -> int:
    """``aibuild run``: resolve what to run, apply its profile's run defaults and a default
    output directory for training, run it; the container's exit code. The container's
    output and what aibuild says go to ``console``."""
    terminal.check_terminal(options.tty)  # before anything is resolved or started
    make_output_dir(options.output)
    target = resolve_target(ref, overrides)
    options = with_plan_defaults(options, target)
    with client_session(client) as engine:
        options = with_default_output(engine, options, target, console.say)
        if options.interactive or options.tty:
            return run_interactive(target, options, console, client=engine)
        return run_container(target, options, console, client=engine)


__all__ = [
    "Console",
    "ContainerOptions",
    "RunTarget",
    "run_image",
    "with_default_output",
]
