"""``aibuild shell PROFILE``: an interactive bash in the profile's image.

``aibuild run -it PROFILE -- bash`` with the project bind-mounted live at its workdir when
the profile has one (``container.run_interactive`` does the rest: a TTY that follows
resizes, your uid with a writable HOME, the profile's GPUs, the shell's exit code, the
container removed afterwards).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aibuild.run.container import (
    ContainerOptions,
    RunTarget,
    resolve_target,
    run_interactive,
    with_plan_defaults,
)
from aibuild.run.terminal import check_terminal

SHELL = ("bash",)


def shell_options(options: ContainerOptions, target: RunTarget) -> ContainerOptions:
    """bash with a TTY, and the project mounted live when the target's profile has one."""
    project = target.plan.project if target.plan else None
    return replace(options, args=SHELL, interactive=True, tty=True, live=project is not None)


def run_shell(
    ref: str | None, overrides: tuple[str, ...], options: ContainerOptions, client: Any = None
) -> int:
    """``aibuild shell``: the shell's exit code."""
    check_terminal(True)  # before anything is resolved or started
    target = resolve_target(ref, overrides)
    options = with_plan_defaults(shell_options(options, target), target)
    return run_interactive(target, options, client=client)
