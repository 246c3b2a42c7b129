"""The terminal side of interactive runs (``aibuild shell``, ``aibuild run -it``), as
``docker run -it`` does it.

A socket attached to the container's stdin, stdout and stderr; our own terminal in raw
mode (so Ctrl-C, Ctrl-D and every other key go to the program in the container, whose
terminal turns them into signals or EOF); a thread that copies the container's output to
stdout while the main thread copies stdin to the container and turns SIGWINCH into the
engine's ``resize``. Without a TTY (``-i`` alone) stdin is piped through, and its end
half-closes the socket, which closes the container's stdin. The container's life (its
configuration, start, exit code, removal) is ``interactive.run_interactive``'s.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from aibuild.errors import RunError

STDOUT, STDERR = 1, 2


def attach_socket(client: Any, container_id: str) -> Any:
    """A socket on the container's stdin, stdout and stderr (raw bytes with a TTY,
    multiplexed frames without)."""
    params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
    sock = client.api.attach_socket(container_id, params=params)
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(None)  # an idle shell is not a timeout
    return sock


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Output(threading.Thread):
    """Copies the container's output to our stdout/stderr until it ends."""

    def __init__(self, sock: Any, tty: bool, out_fd: int, err_fd: int) -> None:
        super().__init__(name="aibuild-session-output", daemon=True)
        self.sock, self.tty, self.fds = sock, tty, {STDOUT: out_fd, STDERR: err_fd}
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        from docker.utils.socket import frames_iter

        try:
            for stream, data in frames_iter(self.sock, self.tty):
                if data:
                    write_all(self.fds.get(stream, self.fds[STDOUT]), data)
        except OSError as exc:
            self.error = exc
        finally:
            self.done.set()

    def wait(self, seconds: float | None = None) -> bool:
        return self.done.wait(seconds)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode for the duration, restored afterwards."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # keep what was typed ahead: it goes to the container
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def window_changes() -> Iterator[int]:
    """A file descriptor that becomes readable each time our terminal is resized."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def handler(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(write_fd, b"w")

    previous = signal.signal(signal.SIGWINCH, handler)
    try:
        yield read_fd
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(read_fd)
        os.close(write_fd)


def resize(client: Any, container_id: str, fd: int) -> None:
    """Give the container's terminal the size of ours."""
    import docker

    with contextlib.suppress(OSError, docker.errors.APIError):
        size = os.get_terminal_size(fd)
        client.api.resize(container_id, height=size.lines, width=size.columns)


def pump_stdin(
    sock: Any, stdin_fd: int, output: Output, on_resize: Callable[[], None] | None, wake: int
) -> None:
    """Copy stdin to the container until its output ends; at the end of stdin, close the
    container's stdin (half-close the socket). ``wake`` readable: the window changed."""
    raw = getattr(sock, "_sock", sock)
    watched = [stdin_fd, wake] if on_resize else [stdin_fd]
    while not output.done.is_set():
        ready, _, _ = select.select(watched, [], [], 0.2)
        if wake in ready and on_resize:
            os.read(wake, 512)
            on_resize()
        if stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            if not data:
                watched.remove(stdin_fd)
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_WR)
                continue
            try:
                raw.sendall(data)
            except OSError:
                return  # the container went away: its output ends too


def stdin_fd() -> int | None:
    """The file descriptor of our stdin (None when it has none, as under a test runner)."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def check_terminal(tty: bool, fd: int | None = None) -> None:
    """A TTY needs a terminal to follow: refuse one when stdin (or ``fd``) is not one."""
    fd = stdin_fd() if fd is None else fd
    if tty and (fd is None or not os.isatty(fd)):
        raise RunError(
            "a TTY was requested (-t, or aibuild shell) but stdin is not a terminal: run it "
            "from a terminal, or leave out -t (-i alone pipes stdin through)"
        )
