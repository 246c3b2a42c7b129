"""Interactive runs: ``aibuild run -it`` and ``aibuild shell``, as ``docker run -it``.

``run_interactive`` runs a container with the configuration ``aibuild run`` gives it
(``config.container_config``), plus a TTY and an open stdin, attached to this terminal
(``terminal``: raw mode, resizes, the byte pumps); its life (start, stop, removal) is
``lifecycle``'s. ``run_shell`` is ``aibuild shell PROFILE``: ``aibuild run -it PROFILE
-- bash`` with the project bind-mounted live at its workdir when the profile has one (a
TTY that follows resizes, your uid with a writable HOME, the profile's GPUs, the shell's
exit code, the container removed afterwards).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aibuild.engine import client_session, engine_errors
from aibuild.logs import Log
from aibuild.run import terminal
from aibuild.run.config import (
    ContainerOptions,
    RunTarget,
    container_config,
    resolve_target,
    with_plan_defaults,
)
from aibuild.run.lifecycle import (
    Console,
    Terminate,
    close_stream,
    create_and_start,
    ensure_image,
    make_output_dir,
    reap_orphans,
    remove_container,
    signals_as_interrupt,
    stop_container,
    stopped_code,
)

DETACH_WAIT_S = 5.0  # a session's output ended but its container runs on: it was detached
SHELL = ("bash",)


def session_log(say: Log, tty: bool) -> Log:
    """``say`` for a session: in raw mode a newline does not return the carriage, so each
    line ends with one."""
    if not tty:
        return say
    return lambda text: say(text + "\r")


def run_interactive(
    target: RunTarget,
    options: ContainerOptions,
    console: Console,
    *,
    client: Any = None,
    stdin_fd: int | None = None,
) -> int:
    """Run ``target.image`` attached to this terminal (``options.tty``) or to our stdin
    (``options.interactive``); the container's exit code (128 + the signal when aibuild
    itself is stopped). The terminal is restored and the container removed on every path.
    The container's output goes to the file descriptors of ``console``'s streams."""
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    terminal.check_terminal(options.tty, stdin_fd)
    make_output_dir(options.output)
    config = container_config(options, target.image)
    say = session_log(console.say, options.tty)
    with (
        client_session(client) as engine,
        engine_errors(f"running {target.image}"),
        signals_as_interrupt(),
    ):
        ensure_image(engine, target)
        reap_orphans(engine, say)
        container, (sock, exit_code) = create_and_start(
            engine, target, options, config, say, terminal.attach_socket
        )
        fds = (console.stdout.fileno(), console.stderr.fileno())
        output = terminal.Output(sock, options.tty, *fds)
        try:
            _attach(engine, container, sock, output, options, stdin_fd)
            return _exit_code(container, exit_code, say)
        except (KeyboardInterrupt, Terminate) as stop:
            stop_container(container, options.grace_s, say, output)
            return stopped_code(stop)
        finally:
            close_stream(sock, "_sock")
            remove_container(container)


def _attach(
    engine: Any,
    container: Any,
    sock: Any,
    output: terminal.Output,
    options: ContainerOptions,
    stdin_fd: int,
) -> None:
    """The session itself: our terminal raw and following resizes (``tty``), stdin copied
    to the container (``interactive``), until the container's output ends."""
    with contextlib.ExitStack() as session:
        on_resize: Callable[[], None] | None = None
        wake = -1
        if options.tty:
            session.enter_context(terminal.raw_terminal(stdin_fd))
            wake = session.enter_context(terminal.window_changes())
            on_resize = lambda: terminal.resize(engine, container.id, stdin_fd)  # noqa: E731
            on_resize()
        output.start()
        if options.interactive:
            terminal.pump_stdin(sock, stdin_fd, output, on_resize, wake)
        else:
            while not output.wait(0.2):
                pass


def _exit_code(container: Any, exit_code: Callable[[], int], say: Log) -> int:
    """The container's exit code, once it is gone. Output that ended while the container
    runs on means the engine's detach keys (Ctrl-P Ctrl-Q) ended the session: the
    container is removed all the same (a session leaves nothing behind)."""
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(exit_code()), daemon=True)
    waiter.start()
    waiter.join(DETACH_WAIT_S)
    if waiter.is_alive():
        say("aibuild: the session was detached; removing its container")
        remove_container(container)
        waiter.join(30)
    return result[0] if result else 1


def shell_options(options: ContainerOptions, target: RunTarget) -> ContainerOptions:
    """bash with a TTY, and the project mounted live when the target's profile has one."""
    project = target.plan.project if target.plan else None
    return replace(options, args=SHELL, interactive=True, tty=True, live=project is not None)


def run_shell(
    ref: str | None,
    overrides: tuple[str, ...],
    options: ContainerOptions,
    console: Console,
    client: Any = None,
) -> int:
    """``aibuild shell``: the shell's exit code."""
    terminal.check_terminal(True)  # before anything is resolved or started
    target = resolve_target(ref, overrides)
    options = with_plan_defaults(shell_options(options, target), target)
    return run_interactive(target, options, console, client=client)
