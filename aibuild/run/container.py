"""Run: an image -> a training container, with GPU passthrough and training-grade defaults.

- ``resolve_target`` decides what runs: a profile (its plan's image, and its ``run:``
  defaults), any other image reference, or the last image built in this directory.
- ``container_command`` decides entrypoint and arguments: trainer flags (ARGS that start
  with ``-``) are appended to the image's ``aibuild train`` entrypoint, other ARGS
  replace it, ``--nproc-per-node N`` wraps the trainer in ``torchrun``.
- ``run_container`` creates, attaches, starts, streams, waits and always removes the
  container (a failed start included: the engine creates it before failing to start
  it). Ctrl-C (or SIGTERM to aibuild) sends SIGTERM to the container, waits a grace
  period, then kills it. The container's exit code is returned.
- ``run_interactive`` (``aibuild run -it``, ``aibuild shell``): the same container
  configuration with a TTY and an open stdin, this terminal attached (``terminal``).
- ``with_plan_defaults``: the profile's run defaults, and with ``live`` its project
  bind-mounted at its workdir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from aibuild import kv, labels
from aibuild.contract import DATA_DIR, ENV_DATA, ENV_OUTPUT, OUTPUT_DIR, TRAIN_ENTRYPOINT
from aibuild.engine import (
    api_message,
    client_session,
    engine_address,
    engine_errors,
    wait_removed,
)
from aibuild.errors import RunError
from aibuild.image.record import latest_record
from aibuild.profile.load import is_profile_ref
from aibuild.profile.resolve import plan_for
from aibuild.run import terminal
from aibuild.run.gpus import NO_DRIVER_MARKER, GpuRequest, parse_gpus

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

    from aibuild.profile.plan import BuildPlan

# NVIDIA's recommendation for PyTorch containers: unlimited locked memory (pinned
# host buffers, RDMA) and a 64 MiB stack.
MEMLOCK_UNLIMITED = -1
STACK_BYTES = 67108864
DEFAULT_SHM_SIZE = "2g"  # for images that are not a profile's (docker's 64m starves DataLoader)
DEFAULT_GRACE_S = 10.0
DETACH_WAIT_S = 5.0  # a session's output ended but its container runs on: it was detached
DEFAULT_OUTPUT_ROOT = Path("aibuild-output")  # where training results go without --output
TOOLKIT_URL = (
    "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"
)


# ---------------------------------------------------------------------------
# --gpus
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# What to run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTarget:
    """The image to run and, when it came from a profile, its plan and how to build it."""

    image: str
    plan: BuildPlan | None = None
    build_command: str | None = None


def resolve_target(ref: str | None, overrides: Sequence[str] = ()) -> RunTarget:
    """A profile (its plan's image_ref), an image reference, or (None) the last image built."""
    import shlex

    if ref is None:
        record = latest_record()
        if not record:
            raise RunError(
                "name a profile or an image to run (no image built yet in this directory: "
                "`aibuild image PROFILE` builds one)"
            )
        tags = record.get("tags") or [record["image_id"]]
        return RunTarget(image=str(tags[0]))
    if is_profile_ref(ref):
        plan = plan_for(ref, overrides)
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
        return RunTarget(plan.image_ref, plan, f"aibuild image {shlex.quote(ref)}{sets}")
    if looks_like_profile_path(ref):  # never an image: `docker pull ./x.yaml` is no advice
        raise RunError(
            f"profile {ref} not found: no such file (a profile is a .yaml file or a built-in "
            "name: `aibuild profiles` lists those)"
        )
    if overrides:
        raise RunError(f"--set applies to profiles; {ref!r} is not a profile (an image?)")
    return RunTarget(ref)


def looks_like_profile_path(ref: str) -> bool:
    """A path to a profile file (``x.yaml``, ``./x``, ``/abs/x``), not an image reference."""
    return ref.endswith((".yaml", ".yml")) or ref.startswith(("./", "../", "/", "~"))


def container_command(
    args: Sequence[str], nproc_per_node: int | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, command) for the container; None keeps the image's.

    Trainer flags (ARGS starting with ``-``, or none) go after the image's entrypoint;
    any other ARGS replace it. ``nproc_per_node`` runs the trainer under torchrun.
    """
    args = list(args)
    replaces = bool(args) and not args[0].startswith("-")
    if replaces:
        if nproc_per_node is not None:
            raise ValueError("--nproc-per-node runs the trainer; it cannot wrap a custom command")
        return [args[0]], args[1:]
    if nproc_per_node is not None:
        if nproc_per_node < 1:
            raise ValueError("--nproc-per-node must be at least 1")
        torchrun = ["torchrun", "--nproc-per-node", str(nproc_per_node), "-m", *TRAIN_ENTRYPOINT]
        return torchrun, args
    return None, args or None


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerOptions:
    """Everything about a run apart from the image. Unless ``gpus_given``, ``gpus`` comes
    from the profile's ``run.gpus``; ``shm_size`` None, from its ``run.shm_size``
    (``with_plan_defaults``)."""

    args: tuple[str, ...] = ()
    gpus: GpuRequest | None = None
    gpus_given: bool = False  # --gpus was given (``--gpus none`` is None, and given)
    shm_size: str | None = None
    ipc: str | None = None
    data: str | None = None
    output: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    detach: bool = False
    nproc_per_node: int | None = None
    user: str | None = None  # default: the caller's uid:gid with --output, a mount, a TTY
    grace_s: float = DEFAULT_GRACE_S
    labels: tuple[tuple[str, str], ...] = field(default=())
    interactive: bool = False  # -i: the caller's stdin goes to the container
    tty: bool = False  # -t: a terminal in the container, following the caller's
    live: bool = False  # --live: the profile's project bind-mounted at its workdir
    project_mount: tuple[str, str] | None = None  # (host folder, workdir), from ``live``
    ports: tuple[tuple[int, str, int], ...] = ()  # (container port, host address, host port)
    # a job file's container (``compose``, ``slurm``): labelled as what it is, with no owner
    exported: str | None = None


def container_config(options: ContainerOptions, image: str) -> dict[str, Any]:
    """The keyword arguments for ``client.containers.create`` (pure, testable)."""
    from docker.types import Mount, Ulimit

    entrypoint, command = container_command(options.args, options.nproc_per_node)
    environment: dict[str, str] = {}
    mounts = []
    user = options.user
    if options.data:
        mounts.append(
            Mount(DATA_DIR, str(Path(options.data).resolve()), type="bind", read_only=True)
        )
        environment[ENV_DATA] = DATA_DIR
    if options.output:
        mounts.append(Mount(OUTPUT_DIR, str(Path(options.output).resolve()), type="bind"))
        environment[ENV_OUTPUT] = OUTPUT_DIR
    if options.project_mount:
        host, workdir = options.project_mount
        mounts.append(Mount(workdir, host, type="bind"))
    if user is None and (options.output or options.project_mount or options.tty):
        # Files written to /output or the project belong to the caller, not to the image's
        # user, and so does an interactive session; that uid has no home in the image, so
        # give it one that is writable.
        user = f"{os.getuid()}:{os.getgid()}"
        environment["HOME"] = "/tmp"
    environment.update(dict(options.env))
    config: dict[str, Any] = {
        "image": image,
        "entrypoint": entrypoint,
        "command": command,
        "environment": environment,
        "mounts": mounts,
        "user": user,
        "name": options.name,
        # docker-py's "not detached" with stdin open is `docker run -i`: AttachStdin and
        # StdinOnce (the end of the caller's stdin closes the container's)
        "detach": not options.interactive,
        "labels": _labels(options),
        "ulimits": [
            Ulimit(name="memlock", soft=MEMLOCK_UNLIMITED, hard=MEMLOCK_UNLIMITED),
            Ulimit(name="stack", soft=STACK_BYTES, hard=STACK_BYTES),
        ],
        "device_requests": [options.gpus.to_device_request()] if options.gpus else None,
        "auto_remove": True,  # the engine deletes it on exit, even if aibuild was killed
        "tty": options.tty or None,
        "stdin_open": options.interactive or None,
        "ports": {f"{c}/tcp": (host, port) for c, host, port in options.ports} or None,
    }
    if options.ipc:
        config["ipc_mode"] = options.ipc
    if options.ipc != "host":  # the host's namespace brings its own /dev/shm
        config["shm_size"] = options.shm_size or DEFAULT_SHM_SIZE
    return {k: v for k, v in config.items() if v is not None}


def _labels(options: ContainerOptions) -> dict[str, str]:
    """Only a live, attached ``aibuild run`` names itself the owner (the reaper's mark); an
    exported job says what it is; a user's ``--label`` never takes aibuild's own keys."""
    if options.exported:
        own = {labels.EXPORTED: options.exported}
    else:
        own = {labels.RUN: "1", **({} if options.detach else {labels.RUN_OWNER: owner_label()})}
    user = {k: v for k, v in options.labels if not k.startswith(RESERVED_LABEL_PREFIX)}
    return {**user, **own}


RESERVED_LABEL_PREFIX = "ai.aibuild.run"


class _Terminate(Exception):
    """aibuild itself got SIGTERM or SIGHUP (its terminal closed): treated like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminate(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------
# Containers that outlive a killed aibuild
# ---------------------------------------------------------------------------
# SIGKILL leaves no chance to clean up. What Docker offers instead: AutoRemove, so the
# engine deletes the container as soon as it exits; and a label naming the attached
# `aibuild run` (host, pid, process start time), so that the next `aibuild run` on this
# host stops and removes containers whose aibuild is gone. Detached runs (-d) carry no
# owner: they are meant to outlive aibuild.


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid, it names one process even after the pid is reused. Empty when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def owner_label(pid: int | None = None) -> str:
    """``host:pid:start:uid`` of this process (or ``pid``): the attached ``aibuild run`` that
    owns a container or a network, and the user it runs as."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}:{os.getuid()}"


def is_orphan(owner: str) -> bool:
    """Whether the ``aibuild run`` an owner label names is gone. Judged only on its host, for
    labels of this user's runs, with a known start time: anything else (another host, another
    user, a label aibuild did not write) is not ours to remove."""
    parts = owner.split(":")
    if len(parts) != 4:
        return False
    host, pid_text, start, uid = parts
    if host != socket.gethostname() or not pid_text.isdigit() or not start.isdigit():
        return False
    if uid != str(os.getuid()):
        return False
    return not Path(f"/proc/{pid_text}").exists() or _start_time(int(pid_text)) != start


def reap_orphans(client: docker.DockerClient, say: Any) -> list[str]:
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
        _remove(container)
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


def _remove(container: Any, wait_s: float = 30.0) -> None:
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


class _Pump(threading.Thread):
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


def _kill(container: Any) -> None:
    import docker

    with contextlib.suppress(docker.errors.APIError):
        container.kill()


class Output(Protocol):
    """What streams a container's output: ``wait(seconds)`` is True once it has ended."""

    def wait(self, seconds: float | None = None) -> bool: ...


def _stop(container: Any, grace_s: float, say: Any, pump: Output | None) -> None:
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
            _kill(container)
    except (KeyboardInterrupt, _Terminate):
        say("aibuild: killing the container")
        _kill(container)
    if pump is not None:
        pump.wait(5)


def _ensure_image(client: Any, target: RunTarget) -> None:
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


def run_container(
    target: RunTarget,
    options: ContainerOptions,
    *,
    client: docker.DockerClient | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    say: Any = None,
    started: Callable[[Any], None] | None = None,
) -> int:
    """Run ``target.image`` with ``options``; the container's exit code (130 if interrupted).

    With ``options.detach`` it returns 0 once the container runs (the engine removes
    it when it exits) and prints its id. The container is removed on every other path.
    ``started(container)`` is called once it runs, its output flowing.
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer

    def default_say(text: str) -> None:
        err.write((text + "\n").encode())
        err.flush()

    say = say or default_say
    make_output_dir(options.output)
    config = container_config(options, target.image)
    with client_session(client) as engine:
        return _run(engine, target, options, config, out, err, say, started)


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


RLIMIT_MARKER = "error setting rlimit"
NOT_FOUND_MARKER = "executable file not found"


def _without_memlock(config: dict[str, Any]) -> dict[str, Any]:
    limits = [u for u in config.get("ulimits", []) if u["Name"] != "memlock"]
    return {**config, "ulimits": limits}


def _exit_waiter(client: Any, container_id: str) -> Callable[[], int]:
    """The exit code, waited for from before the start (``engine.wait_removed``)."""
    return wait_removed(client, container_id)


def attach_output(client: Any, container_id: str) -> Any:
    """The container's stdout and stderr, demultiplexed: (out, err) chunks."""
    return client.api.attach(
        container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True
    )


def _create_and_start(
    client: Any,
    target: RunTarget,
    options: ContainerOptions,
    config: dict[str, Any],
    say: Any,
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
            exit_code = _exit_waiter(client, container.id)
        container.start()
    except docker.errors.APIError as exc:
        if attached is not None:
            attached.close()
        _remove(container)
        has_memlock = any(u["Name"] == "memlock" for u in config.get("ulimits", []))
        if RLIMIT_MARKER in api_message(exc) and has_memlock:
            say(
                "aibuild: warning: the engine cannot raise the memlock limit to unlimited "
                "(its own hard limit is lower); running with the engine's default memlock"
            )
            return _create_and_start(client, target, options, _without_memlock(config), say, attach)
        raise _start_error(exc, target.image, options) from None
    except BaseException:
        if attached is not None:
            attached.close()
        _remove(container)
        raise
    return container, (attached, exit_code if attached is not None else None)


def _run(
    client: Any,
    target: RunTarget,
    options: ContainerOptions,
    config: dict[str, Any],
    out: BinaryIO,
    err: BinaryIO,
    say: Any,
    started: Callable[[Any], None] | None = None,
) -> int:
    container = None
    pump: _Pump | None = None
    with engine_errors(f"running {target.image}"), _signals_as_interrupt():
        _ensure_image(client, target)
        try:
            reap_orphans(client, say)
            container, (attached, exit_code) = _create_and_start(
                client, target, options, config, say
            )
            if options.detach:
                say(
                    f"aibuild: started {container.name} ({container.short_id}); "
                    "the engine removes it when it exits"
                )
                out.write((container.id + "\n").encode())
                out.flush()
                return 0
            pump = _Pump(attached, out, err)
            pump.start()
            if started is not None:
                started(container)
            pump.wait()
            code: int = exit_code()
            if pump.error is not None:
                raise pump.error
            return code
        except (KeyboardInterrupt, _Terminate) as stop:
            if container is not None:
                _stop(container, options.grace_s, say, pump)
            # the shell's convention: 128 + the signal (Ctrl-C 130, SIGTERM 143, SIGHUP 129)
            return 128 + (stop.signum if isinstance(stop, _Terminate) else signal.SIGINT)
        finally:
            if container is not None and not options.detach:
                _remove(container)


def run_interactive(
    target: RunTarget,
    options: ContainerOptions,
    *,
    client: Any = None,
    stdin_fd: int | None = None,
    stdout_fd: int | None = None,
    stderr_fd: int | None = None,
) -> int:
    """Run ``target.image`` attached to this terminal (``options.tty``) or to our stdin
    (``options.interactive``); the container's exit code (128 + the signal when aibuild
    itself is stopped). The terminal is restored and the container removed on every path.
    """
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    stderr_fd = sys.stderr.fileno() if stderr_fd is None else stderr_fd
    terminal.check_terminal(options.tty, stdin_fd)
    make_output_dir(options.output)
    config = container_config(options, target.image)

    def say(text: str) -> None:
        # In raw mode a newline does not return the carriage: say it in full.
        terminal.write_all(stderr_fd, (text + ("\r\n" if options.tty else "\n")).encode())

    with (
        client_session(client) as engine,
        engine_errors(f"running {target.image}"),
        _signals_as_interrupt(),
    ):
        _ensure_image(engine, target)
        reap_orphans(engine, say)
        container, (sock, exit_code) = _create_and_start(
            engine, target, options, config, say, terminal.attach_socket
        )
        output = terminal.Output(sock, options.tty, stdout_fd, stderr_fd)
        try:
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
            return _exit_code(container, exit_code, say)
        except (KeyboardInterrupt, _Terminate) as stop:
            _stop(container, options.grace_s, say, output)
            return 128 + (stop.signum if isinstance(stop, _Terminate) else signal.SIGINT)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            _remove(container)


def _exit_code(container: Any, exit_code: Callable[[], int], say: Any) -> int:
    """The container's exit code, once it is gone. Output that ended while the container
    runs on means the engine's detach keys (Ctrl-P Ctrl-Q) ended the session: the
    container is removed all the same (a session leaves nothing behind)."""
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(exit_code()), daemon=True)
    waiter.start()
    waiter.join(DETACH_WAIT_S)
    if waiter.is_alive():
        say("aibuild: the session was detached; removing its container")
        _remove(container)
        waiter.join(30)
    return result[0] if result else 1


def env_pairs(
    values: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``--env`` values -> pairs: ``K=V``, or a bare ``K`` taking the caller's value (as docker;
    a bare ``K`` that the caller does not have is left out)."""
    env = os.environ if environ is None else environ
    pairs: list[tuple[str, str]] = []
    for item in values:
        key, value = kv.split_item(item, option="--env", bare=True)
        if value is None:
            if key not in env:
                continue
            value = env[key]
        pairs.append((key, value))
    return pairs


def label_pairs(values: Sequence[str]) -> list[tuple[str, str]]:
    """``--label`` values -> pairs (``K=V``; a bare ``K`` is an empty label, as docker)."""
    pairs = []
    for item in values:
        key, value = kv.split_item(item, option="--label", key=kv.LABEL, bare=True)
        pairs.append((key, value or ""))
    return pairs


def with_plan_defaults(options: ContainerOptions, target: RunTarget) -> ContainerOptions:
    """``options`` with what was left unset taken from the target's profile (``run.gpus``,
    ``run.shm_size``, ``run.ipc``) and, with ``live``, its project mounted at its workdir; an image
    that is not a profile's keeps the engine's defaults."""
    plan = target.plan
    project = plan.project if plan else None
    if options.live and project is None:
        what = f"profile {plan.profile_name}" if plan else f"{target.image} (not a profile)"
        raise RunError(
            f"--live mounts a profile's project, and {what} has no project: section "
            "(project.path names the source folder)"
        )
    if options.nproc_per_node is not None and project is not None and project.command:
        raise RunError(
            "--nproc-per-node runs the embedded trainer under torchrun, but this profile's "
            "image runs project.command: put torchrun in it instead (e.g. torchrun "
            "--nproc-per-node 2 train.py)"
        )
    if plan is None:
        return options
    return replace(
        options,
        gpus=options.gpus if options.gpus_given else parse_gpus(plan.run_gpus),
        shm_size=options.shm_size or plan.run_shm_size,
        ipc=options.ipc or (plan.run_ipc if plan.run_ipc != "private" else None),
        project_mount=(project.path, project.workdir) if project and options.live else None,
    )


def runs_trainer(options: ContainerOptions) -> bool:
    """Whether the container runs the image's entrypoint (the trainer, or the project's
    command) with flags or none."""
    return not options.args or options.args[0].startswith("-")


def with_default_output(
    client: docker.DockerClient, options: ContainerOptions, target: RunTarget, say: Any
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
    *,
    client: docker.DockerClient | None = None,
) -> int:
    """``aibuild run``: resolve what to run, apply its profile's run defaults and a default
    output directory for training, run it; the container's exit code."""
    terminal.check_terminal(options.tty)  # before anything is resolved or started
    make_output_dir(options.output)
    target = resolve_target(ref, overrides)
    options = with_plan_defaults(options, target)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with client_session(client) as engine:
        options = with_default_output(engine, options, target, say)
        if options.interactive or options.tty:
            return run_interactive(target, options, client=engine)
        return run_container(target, options, client=engine)
