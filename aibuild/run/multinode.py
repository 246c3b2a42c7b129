"""``aibuild run --nodes N``: one training job across N containers on one Docker host.

Each container is a node: it runs torchrun with the c10d rendezvous that a cluster job
uses (``aibuild.run.rendezvous.Rendezvous``), hosted by node 0, on a user-defined bridge
network made for the job, so the DDP job that would span machines spans containers.
The containers are configured as ``aibuild run`` configures one (``container_config``:
GPUs, shm, ulimits, mounts, user) and named ``<name>-node<i>``, with that name as their
host name, in order, so that the rendezvous gives node i the group rank i.

Every line a node prints is prefixed with ``[node i]``; torchrun prefixes each worker's
lines with its global rank. When a node exits non-zero the others are stopped (SIGTERM,
the grace period, SIGKILL) and its exit code is returned; Ctrl-C or SIGTERM to aibuild
stops them all (130). The containers and the network are removed on every path.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from aibuild import bounds, labels
from aibuild.engine import client_session, engine_errors
from aibuild.errors import RunError
from aibuild.logs import Log
from aibuild.run.config import (
    ContainerOptions,
    RunTarget,
    container_config,
    resolve_target,
    with_plan_defaults,
)
from aibuild.run.container import with_default_output
from aibuild.run.gpus import GpuRequest
from aibuild.run.lifecycle import (
    Console,
    Pump,
    Terminate,
    create_and_start,
    ensure_image,
    kill_container,
    make_output_dir,
    remove_container,
    signals_as_interrupt,
    stopped_code,
)
from aibuild.run.owner import owner_label
from aibuild.run.rendezvous import DEFAULT_RDZV_PORT, RANK_PREFIX_ENV, Rendezvous

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


class _Prefixed:
    """A byte stream that writes whole lines, each behind ``prefix``, under a lock shared by
    every node, so that lines of two nodes never interleave."""

    def __init__(self, out: BinaryIO, prefix: bytes, lock: threading.Lock) -> None:
        self.out = out
        self.prefix = prefix
        self.lock = lock
        self.partial = b""
        self.muted = False  # after the user's stop: torchrun's shutdown tracebacks are noise

    def write(self, data: bytes) -> int:
        if self.muted:
            return len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if lines:
            with self.lock:
                self.out.write(b"".join(self.prefix + line + b"\n" for line in lines))
                self.out.flush()
        return len(data)

    def flush(self) -> None:
        if self.partial:
            with self.lock:
                self.out.write(self.prefix + self.partial + b"\n")
                self.out.flush()
            self.partial = b""


@dataclass
class _Node:
    index: int
    config: dict[str, Any]
    out: _Prefixed
    err: _Prefixed
    container: Any = None
    pump: Pump | None = None
    exit_code: int | None = None
    wait_exit: Any = None  # the exit code, asked for before the start (AutoRemove)

    def finished(self) -> bool:
        return self.pump is not None and self.pump.done.is_set()


@dataclass
class _Job:
    client: Any
    options: ContainerOptions
    network: str
    nodes: list[_Node] = field(default_factory=list)
    network_id: str | None = None  # removed by ID: a name can be ambiguous


def _gpus_for(options: ContainerOptions, nodes: int) -> list[GpuRequest | None]:
    """Each node's GPUs: named devices are shared out in order (``device=0,1,2,3`` over two
    nodes: 0,1 and 2,3); a count or ``all`` is asked for by every node."""
    gpus = options.gpus
    if gpus is None or not gpus.device_ids:
        return [gpus] * nodes
    ids = gpus.device_ids
    if len(ids) % nodes:
        raise RunError(
            f"--gpus device={','.join(ids)}: {len(ids)} GPUs cannot be shared out evenly "
            f"over {nodes} nodes"
        )
    per = len(ids) // nodes
    return [replace(gpus, device_ids=ids[i * per : (i + 1) * per]) for i in range(nodes)]


def node_configs(
    options: ContainerOptions, image: str, nodes: int, base: str
) -> list[dict[str, Any]]:
    """The container config of every node (pure): ``aibuild run``'s config, with the
    node's name and host name, the job's network and torchrun's c10d rendezvous on
    node 0."""
    width = len(str(nodes - 1))
    names = [f"{base}-node{i:0{width}d}" for i in range(nodes)]
    rdzv = Rendezvous(nodes, options.nproc_per_node or 1, f"{names[0]}:{DEFAULT_RDZV_PORT}", base)
    command = rdzv.torchrun(options.args)
    configs = []
    for name, gpus in zip(names, _gpus_for(options, nodes), strict=True):
        node_options = replace(options, name=name, gpus=gpus, detach=False, nproc_per_node=None)
        config = container_config(node_options, image)
        config.update(entrypoint=command[:1], command=command[1:], hostname=name, network=base)
        config["environment"] = {**dict([RANK_PREFIX_ENV]), **config["environment"]}
        configs.append(config)
    return configs


JOB_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,40}")


def check_job_name(name: str) -> str:
    """``--name`` for ``run --nodes``: names the network and the nodes, so it is a plain
    word (no ``/``, ``.``, upper case)."""
    if not JOB_NAME.fullmatch(name):
        raise RunError(
            f"--name {name[:80]!r}: with --nodes a name is lower-case letters, digits, '-' and "
            "'_', at most 41 characters (it names the job's network and nodes)"
        )
    return name


def _check_network_free(client: Any, name: str) -> None:
    """A network of that name exists already: the job would share it, and removing by name
    could remove the other one."""
    if any(n.name == name for n in client.networks.list(names=[name])):
        raise RunError(
            f"--name {name}: a network of that name exists already on this engine; pick "
            "another --name"
        )


def _once(say: Log) -> Log:
    """``say`` that says each message once (a warning every node would repeat)."""
    said: set[str] = set()

    def once(text: str) -> None:
        if text not in said:
            said.add(text)
            say(text)

    return once


def _stop_all(job: _Job, grace_s: float, say: Log) -> None:
    """SIGTERM to every node still running, up to ``grace_s`` for all to exit, then SIGKILL.
    A second Ctrl-C kills at once."""
    import docker as docker_sdk

    running = [n for n in job.nodes if n.container is not None and not n.finished()]
    if not running:
        return
    say(f"aibuild: stopping {len(running)} node(s) (SIGTERM, {grace_s:g}s grace)")
    for node in running:
        with contextlib.suppress(docker_sdk.errors.APIError):
            node.container.kill(signal="SIGTERM")
    deadline = time.monotonic() + grace_s
    try:
        while any(not n.finished() for n in running) and time.monotonic() < deadline:
            time.sleep(0.2)
    except (KeyboardInterrupt, Terminate):
        pass
    for node in running:
        if not node.finished():
            say(f"aibuild: killing node {node.index}")
            kill_container(node.container)
    for node in running:
        if node.pump is not None:
            node.pump.wait(5)


def _cleanup(job: _Job) -> None:
    import docker as docker_sdk

    for node in job.nodes:
        if node.container is not None:
            remove_container(node.container)
        node.out.flush()
        node.err.flush()
    if job.network_id is not None:
        with contextlib.suppress(docker_sdk.errors.NotFound):
            job.client.api.remove_network(job.network_id)


def _watch(job: _Job, say: Log) -> int:
    """Wait for the nodes; the first non-zero exit stops the others and is returned."""
    pending = list(job.nodes)
    while pending:
        for node in [n for n in pending if n.finished()]:
            pending.remove(node)
            node.exit_code = int(node.wait_exit())
            if node.pump is not None and node.pump.error is not None:
                raise node.pump.error
            if node.exit_code != 0:
                say(f"aibuild: node {node.index} exited with {node.exit_code}; stopping the job")
                _stop_all(job, job.options.grace_s, say)
                return node.exit_code
        time.sleep(0.2)
    return 0


def run_nodes(
    target: RunTarget,
    options: ContainerOptions,
    nodes: int,
    console: Console,
    *,
    client: docker.DockerClient | None = None,
) -> int:
    """Run ``target.image`` as an N-node torchrun job; the failing node's exit code, 0, or
    128 + the signal when interrupted. The nodes' lines go to ``console``'s streams, each
    behind its node's prefix; what aibuild says, to ``console.say``."""
    bounds.check("run_nodes", nodes, "--nodes", RunError)
    if options.detach:
        raise RunError("--detach starts one container; it cannot be combined with --nodes")
    if options.args and not options.args[0].startswith("-"):
        raise RunError(
            "--nodes runs the trainer under torchrun: ARGS after -- must be trainer flags, "
            f"not a command ({options.args[0]!r})"
        )
    say = console.say
    make_output_dir(options.output)
    base = check_job_name(options.name) if options.name else f"aibuild-{uuid.uuid4().hex[:8]}"
    configs = node_configs(options, target.image, nodes, base)
    lock = threading.Lock()
    with client_session(client) as engine:
        job = _Job(engine, options, base)
        for i, config in enumerate(configs):
            prefix = f"[node {i}] ".encode()
            out_i = _Prefixed(console.stdout, prefix, lock)
            err_i = _Prefixed(console.stderr, prefix, lock)
            job.nodes.append(_Node(i, config, out_i, err_i))
        with engine_errors(f"running {target.image} on {nodes} nodes"), signals_as_interrupt():
            try:
                ensure_image(engine, target)
                _start(job, target, say)
                names = ", ".join(c["name"] for c in configs)
                say(f"aibuild: {nodes} nodes on network {base}: {names}")
                return _watch(job, say)
            except (KeyboardInterrupt, Terminate) as stop:
                for node in job.nodes:
                    node.out.flush()
                    node.err.flush()
                    node.out.muted = node.err.muted = True
                say("aibuild: stopping the job; the nodes' shutdown output is not shown")
                _stop_all(job, options.grace_s, say)
                return stopped_code(stop)  # as `aibuild run`: 128 + the signal
            finally:
                _cleanup(job)


def _start(job: _Job, target: RunTarget, say: Log) -> None:
    """The job's network, owned by this run, then every node on it, its output pumped."""
    engine, options = job.client, job.options
    _check_network_free(engine, job.network)
    network = engine.networks.create(
        job.network,
        driver="bridge",
        labels={**dict(options.labels), labels.RUN: "1", labels.RUN_OWNER: owner_label()},
    )
    job.network_id = network.id
    say_once = _once(say)
    for node in job.nodes:
        node.container, (attached, node.wait_exit) = create_and_start(
            engine, target, options, node.config, say_once
        )
        node.pump = Pump(attached, cast(BinaryIO, node.out), cast(BinaryIO, node.err))
        node.pump.start()


def run_multinode(
    ref: str | None,
    overrides: tuple[str, ...] | list[str],
    options: ContainerOptions,
    nodes: int,
    console: Console,
    *,
    client: docker.DockerClient | None = None,
) -> int:
    """``aibuild run --nodes N``: resolve what to run, apply its profile's run defaults, run
    it on N nodes."""
    bounds.check("run_nodes", nodes, "--nodes", RunError)
    if options.name:
        check_job_name(options.name)
    make_output_dir(options.output)
    target = resolve_target(ref, overrides)
    options = with_plan_defaults(options, target)
    with client_session(client) as engine:
        # results kept on the host
        options = with_default_output(engine, options, target, console.say)
        return run_nodes(target, options, nodes, console, client=engine)
