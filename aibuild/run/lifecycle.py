"""A container's life: create, attach, start, stream, stop, remove, and the signals and
orphans around it.

- ``run_container`` creates, attaches, starts, streams, waits and always removes the
  container (a failed start included: the engine creates it before failing to start
  it). Ctrl-C (or SIGTERM to aibuild) sends SIGTERM to the container, waits a grace
  period, then kills it. The container's exit code is returned.
- ``create_and_start``, ``Pump``, ``stop_container``, ``remove_container``: the steps, shared with
  ``aibuild run --nodes`` (``multinode``) and interactive sessions (``interactive``).
- ``signals_as_interrupt``: SIGTERM and SIGHUP to aibuild stop a run as Ctrl-C does.
- ``reap_orphans``: containers and networks whose attached ``aibuild run`` was killed
  (``owner``).

Nothing here prints: the container's output goes to the ``Console``'s byte streams, and
what aibuild says goes through its ``say`` (a ``Log``), both given by the caller.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from aibuild import labels
from aibuild.engine import api_message, client_session, engine_address, engine_errors, wait_removed
from aibuild.errors import RunError
from aibuild.logs import Log
from aibuild.run.config import ContainerOptions, RunTarget, container_config
from aibuild.run.gpus import NO_DRIVER_MARKER
from aibuild.run.owner import is_orphan

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

TOOLKIT_URL = (
    "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"
)
RLIMIT_MARKER = "error setting rlimit"
NOT_FOUND_MARKER = "executable file not found"


@dataclass(frozen=True)
class Console:
    """Where a run shows things, as the caller (the CLI) gives it: the container's output
    (``stdout``, ``stderr``: bytes, as the container wrote them) and aibuild's own lines
    (``say``: progress, warnings, what it did)."""

    stdout: BinaryIO
    stderr: BinaryIO
    say: Log


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


class Terminate(Exception):
    """aibuild itself got SIGTERM or SIGHUP (its terminal closed): treated like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminate`` for the duration (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminate(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stopped_code(stop: BaseException) -> int:
    """The shell's convention: 128 + the signal (Ctrl-C 130, SIGTERM 143, SIGHUP 129)."""
    return 128 + (stop.signum if isinstance(stop, Terminate) else signal.SIGINT)


# ---------------------------------------------------------------------------
# Containers that outlive a killed aibuild (``owner``)
# ---------------------------------------------------------------------------


def reap_orphans(client: docker.DockerClient, say: Log) -> list[str]:
    """Stop and remove the containers, then the networks (``run --nodes``), of attached runs
    whose aibuild was killed; the containers' ids. Only objects that carry both aibuild's
    run mark and an owner label naming a dead process of this user are touched."""
    import docker as docker_sdk

    reaped = []
    found = client.containers.list(all=True, filters={"label": labels.RUN_OWNER})
    for container in found:
        container_labels = container.labels or {}
        owner = container_labels.get(labels.RUN_OWNER, "")
        if container_labels.get(labels.RUN) != "1" or not is_orphan(owner):
            continue
        say(
            f"aibuild: removing container {container.short_id} ({container.name}), left "
            f"running by an `aibuild run` that was killed (pid {owner.split(':')[1]})"
        )
        remove_container(container)
        reaped.append(container.id)
    for network in client.networks.list(filters={"label": labels.RUN_OWNER}):
        network_labels = network.attrs.get("Labels") or {}
        owner = network_labels.get(labels.RUN_OWNER, "")
        if network_labels.get(labels.RUN) != "1" or not is_orphan(owner):
            continue
        say(f"aibuild: removing network {network.name}, left by a killed `aibuild run --nodes`")
        with contextlib.suppress(docker_sdk.errors.NotFound, docker_sdk.errors.APIError):
            client.api.remove_network(network.id)  # by ID: a name may be ambiguous
    return reaped


# ---------------------------------------------------------------------------
# The steps of a run
# ---------------------------------------------------------------------------


def _start_error(exc: Any, image: str, options: ContainerOptions) -> RunError:
    message = api_message(exc)
    if NO_DRIVER_MARKER in message:
        asked = options.gpus.describe() if options.gpus else "?"
        return RunError(
            f"GPUs were requested (--gpus {asked}) but the Docker engine at "
            f"{engine_address()} has no NVIDIA GPU support ({message}).\n"
            f"Install the NVIDIA Container Toolkit and restart the engine ({TOOLKIT_URL}), "
            "or run without GPUs: --gpus none"
        )
    if NOT_FOUND_MARKER in message:
        return RunError(
            f"the container from {image} could not start: its command is not in the image "
            f"({message}); check project.command, or the command given after --"
        )
    return RunError(f"the container from {image} could not start: {message}")


def _stream(chunks: Any, stdout: BinaryIO, stderr: BinaryIO) -> None:
    for out, err in chunks:
        if out:
            stdout.write(out)
            stdout.flush()
        if err:
            stderr.write(err)
            stderr.flush()


def remove_container(container: Any, wait_s: float = 30.0) -> None:
    """Remove the container and return once it is gone (AutoRemove may be removing it
    already: the engine then refuses a second removal, and the container lingers for a
    moment)."""
    import docker

    try:
        container.remove(force=True)
        return
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if "already in progress" not in api_message(exc):
            raise
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            container.reload()
        except docker.errors.NotFound:
            return
        time.sleep(0.1)


class Pump(threading.Thread):
    """Copies the attached output to our stdout/stderr until the container exits.

    A thread, so that the main thread stays free to take Ctrl-C while output keeps
    flowing, including what the container prints after its SIGTERM.
    """

    def __init__(self, attached: Any, out: BinaryIO, err: BinaryIO) -> None:
        super().__init__(name="aibuild-run-output", daemon=True)
        self.attached = attached
        self.out = out
        self.err = err
        self.error: BaseException | None = None
        # An Event, not join()/is_alive(): a join interrupted by Ctrl-C can leave
        # is_alive() False while the thread still runs (CPython 3.11).
        self.done = threading.Event()

    def run(self) -> None:
        try:
            _stream(self.attached, self.out, self.err)
        except Exception as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done.set()

    def wait(self, seconds: float | None = None) -> bool:
        """Wait in short slices (so signals are handled); True when the output ended."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self.done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.done.wait(0.2)
        return True


def kill_container(container: Any) -> None:
    import docker

    with contextlib.suppress(docker.errors.APIError):
        container.kill()


class Output(Protocol):
    """What streams a container's output: ``wait(seconds)`` is True once it has ended."""

    def wait(self, seconds: float | None = None) -> bool: ...


def stop_container(container: Any, grace_s: float, say: Log, pump: Output | None) -> None:
    """SIGTERM, up to ``grace_s`` for the container to exit, then SIGKILL.

    A second Ctrl-C kills at once. The container's output keeps flowing meanwhile.
    """
    import docker
    import requests

    say(f"aibuild: stopping container {container.short_id} (SIGTERM, {grace_s:g}s grace)")
    try:
        container.kill(signal="SIGTERM")
    except docker.errors.APIError:
        return  # already exited
    try:
        if pump is not None:
            exited = pump.wait(grace_s)
        else:
            try:
                container.wait(timeout=grace_s)
                exited = True
            except docker.errors.NotFound:
                exited = True  # exited and auto-removed
            except requests.exceptions.RequestException:
                exited = False
        if not exited:
            say(f"aibuild: still running after {grace_s:g}s: killing the container")
            kill_container(container)
    except (KeyboardInterrupt, Terminate):
        say("aibuild: killing the container")
        kill_container(container)
    if pump is not None:
        pump.wait(5)


def ensure_image(client: Any, target: RunTarget) -> None:
    """RunError, saying how to get it, when the image is not on this engine."""
    import docker

    try:
        client.images.get(target.image)
    except docker.errors.ImageNotFound:
        if target.build_command:
            raise RunError(
                f"image {target.image} is not built on this engine; build it with:\n"
                f"  {target.build_command}"
            ) from None
        raise RunError(
            f"image {target.image} is not on this engine: pull it (`docker pull "
            f"{target.image}`) or build it (`aibuild image PROFILE`)"
        ) from None


def make_output_dir(output: str | None) -> None:
    """``--output``: made when missing; one line when it cannot be (a file on the way)."""
    if not output:
        return
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"--output {output}: cannot make that folder: {exc.strerror or exc}"
        ) from None
    if not Path(output).is_dir():
        raise RunError(f"--output {output} exists and is not a folder")


def _without_memlock(config: dict[str, Any]) -> dict[str, Any]:
    limits = [u for u in config.get("ulimits", []) if u["Name"] != "memlock"]
    return {**config, "ulimits": limits}


def attach_output(client: Any, container_id: str) -> Any:
    """The container's stdout and stderr, demultiplexed: (out, err) chunks."""
    return client.api.attach(
        container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True
    )


def close_stream(attached: Any, inner: str = "_response") -> None:
    """Close docker-py's attach stream and what it wraps (``inner``): the stream's own
    close shuts the socket down but leaves the response's file (for an attach socket,
    the socket under the wrapper, ``_sock``) holding the connection to the engine open."""
    for each in (attached, getattr(attached, inner, None)):
        if each is not None:
            with contextlib.suppress(Exception):
                each.close()


def create_and_start(
    client: Any,
    target: RunTarget,
    options: ContainerOptions,
    config: dict[str, Any],
    say: Log,
    attach: Callable[[Any, str], Any] = attach_output,
) -> tuple[Any, Any]:
    """Create, attach (unless detached; ``attach(client, id)``), register the exit wait,
    start; (container, (attached stream, exit-code function)).

    A failed start removes its container. An engine whose own hard memlock limit is
    lower than unlimited (no CAP_SYS_RESOURCE) cannot apply NVIDIA's memlock=-1: the
    run is retried once without it, with a warning.
    """
    import docker

    container = client.containers.create(**config)
    attached = None
    try:
        if not options.detach:
            attached = attach(client, container.id)
            exit_code = wait_removed(client, container.id)  # asked before the start
        container.start()
    except docker.errors.APIError as exc:
        if attached is not None:
            close_stream(attached)
        remove_container(container)
        has_memlock = any(u["Name"] == "memlock" for u in config.get("ulimits", []))
        if RLIMIT_MARKER in api_message(exc) and has_memlock:
            say(
                "aibuild: warning: the engine cannot raise the memlock limit to unlimited "
                "(its own hard limit is lower); running with the engine's default memlock"
            )
            return create_and_start(client, target, options, _without_memlock(config), say, attach)
        raise _start_error(exc, target.image, options) from None
    except BaseException:
        if attached is not None:
            close_stream(attached)
        remove_container(container)
        raise
    return container, (attached, exit_code if attached is not None else None)


def run_container(
    target: RunTarget,
    options: ContainerOptions,
    console: Console,
    *,
    client: docker.DockerClient | None = None,
    started: Callable[[Any], None] | None = None,
) -> int:
    """Run ``target.image`` with ``options``; the container's exit code (130 if interrupted).

    With ``options.detach`` it returns 0 once the container runs (the engine removes
    it when it exits) and writes its id to ``console.stdout``. The container is removed
    on every other path. ``started(container)`` is called once it runs, its output flowing.
    """
    make_output_dir(options.output)
    config = container_config(options, target.image)
    with client_session(client) as engine:
        return _run(engine, target, options, config, console, started)


def _run(
    client: Any,
    target: RunTarget,
    options: ContainerOptions,
    config: dict[str, Any],
    console: Console,
    started: Callable[[Any], None] | None = None,
) -> int:
    say = console.say
    container = None
    attached: Any = None
    pump: Pump | None = None
    with engine_errors(f"running {target.image}"), signals_as_interrupt():
        ensure_image(client, target)
        try:
            reap_orphans(client, say)
            container, (attached, exit_code) = create_and_start(
                client, target, options, config, say
            )
            if options.detach:
                say(
                    f"aibuild: started {container.name} ({container.short_id}); "
                    "the engine removes it when it exits"
                )
                console.stdout.write((container.id + "\n").encode())
                console.stdout.flush()
                return 0
            pump = Pump(attached, console.stdout, console.stderr)
            pump.start()
            if started is not None:
                started(container)
            pump.wait()
            code: int = exit_code()
            if pump.error is not None:
                raise pump.error
            return code
        except (KeyboardInterrupt, Terminate) as stop:
            if container is not None:
                stop_container(container, options.grace_s, say, pump)
            return stopped_code(stop)
        finally:
            if attached is not None:
                # the attach stream owns its own connection to the engine: close it here,
                # not when the garbage collector finds it (an in-process caller leaks it)
                close_stream(attached)
            if container is not None and not options.detach:
                remove_container(container)
