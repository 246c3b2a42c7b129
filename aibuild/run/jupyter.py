"""``aibuild jupyter PROFILE``: JupyterLab in the profile's dev image, on this machine only.

The dev image (``<tag>-dev``, built when the profile says ``dev.jupyter: true``) runs with
the profile's run defaults (``config.container_config``: GPUs, shared memory, ulimits,
your uid with a writable HOME, AutoRemove), the project bind-mounted live at its workdir,
and JupyterLab listening on a port published on 127.0.0.1 only (a free one, or
``--port``), the same inside and out so that JupyterLab's own log shows the right URL.
A fresh token each time (``secrets``, passed as ``JUPYTER_TOKEN``): a request without it
is refused. Once ``/api/status`` answers, the URL with its token is written to stdout.
Ctrl-C stops it as every run is stopped (SIGTERM, JupyterLab shuts its kernels down, then
the container is removed).
"""

from __future__ import annotations

import errno
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

from aibuild.errors import RunError
from aibuild.run.config import ContainerOptions, RunTarget, resolve_target, with_plan_defaults
from aibuild.run.lifecycle import Console, run_container

HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def check_port(port: int, host: str = HOST) -> int:
    """``port``, when this machine can listen on it; RunError when it is taken."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "taken" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise RunError(
                f"port {port} on {host} is {why}: choose another --port, or leave --port "
                "out for a free one"
            ) from None
    return port


def jupyter_command(port: int, workdir: str) -> tuple[str, ...]:
    return (
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=0.0.0.0",  # inside the container; published on 127.0.0.1 only
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.allow_root=True",  # your uid is the container's: root when you are
        f"--ServerApp.root_dir={workdir}",
    )


def dev_target(target: RunTarget) -> RunTarget:
    """The dev image of the profile ``target`` came from; RunError when there is none."""
    plan = target.plan
    if plan is None:
        raise RunError(
            f"aibuild jupyter takes a profile (with dev.jupyter: true), not an image "
            f"({target.image})"
        )
    if not plan.dev_jupyter:
        raise RunError(
            f"profile {plan.profile_name} has no dev image: add `dev: {{jupyter: true}}` to "
            f"it and build it again ({target.build_command})"
        )
    return replace(target, image=plan.dev_image_ref)


def wait_until_ready(url: str, token: str, stop: threading.Event) -> bool:
    """Poll ``url/api/status`` with the token until it answers 200 (True), or ``stop``."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = urllib.request.Request(
        f"{url}/api/status", headers={"Authorization": f"token {token}"}
    )
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        stop.wait(0.5)
    return False


def run_jupyter(
    ref: str,
    overrides: tuple[str, ...],
    options: ContainerOptions,
    console: Console,
    *,
    port: int | None = None,
    client: Any = None,
) -> int:
    """``aibuild jupyter``: the container's exit code (130 after Ctrl-C). The URL goes to
    ``console.stdout`` once JupyterLab answers."""
    target = dev_target(resolve_target(ref, overrides))
    assert target.plan is not None
    port = check_port(port) if port is not None else free_port()
    token = secrets.token_urlsafe(32)
    options = replace(
        options,
        args=jupyter_command(port, target.plan.workdir),
        env=(*options.env, ("JUPYTER_TOKEN", token)),
        ports=((port, HOST, port),),
        live=target.plan.project is not None,  # else: the image's own user and home
    )
    options = with_plan_defaults(options, target)
    url = f"http://{HOST}:{port}"
    stop = threading.Event()

    def announce() -> None:
        if wait_until_ready(url, token, stop):
            console.stdout.write(f"{url}/lab?token={token}\n".encode())
            console.stdout.flush()
            console.say("aibuild: JupyterLab is up (the URL above); Ctrl-C stops it")

    def started(container: Any) -> None:
        threading.Thread(target=announce, name="aibuild-jupyter-ready", daemon=True).start()

    try:
        return run_container(target, options, console, client=client, started=started)
    finally:
        stop.set()
