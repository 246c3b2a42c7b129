"""The engine boundary: the one place that creates a Docker client.

The client is created lazily (never at import time, so ``aibuild --help`` does
not import docker) and every way of failing to reach the engine becomes an
``EngineError`` whose message names the engine address (``DOCKER_HOST``) and
says how to start one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild.errors import EngineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

DEFAULT_HOST = "unix:///var/run/docker.sock"
START_HINT = (
    "Start a Docker engine (`sudo systemctl start docker`, or `make engine` in an "
    "aibuild checkout) or point DOCKER_HOST at a running one."
)


def engine_address(docker_host: str | None = None) -> str:
    """The engine address a client will use: the argument, else DOCKER_HOST, else the socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def unreachable(docker_host: str | None, reason: object) -> EngineError:
    """The error for an engine that does not answer."""
    address = engine_address(docker_host)
    if docker_host:
        origin = ""
    elif os.environ.get("DOCKER_HOST"):
        origin = " (from DOCKER_HOST)"
    else:
        origin = " (DOCKER_HOST is unset: the default)"
    return EngineError(
        f"cannot reach the Docker engine at {address}{origin}: {_short_reason(reason)}\n"
        f"{START_HINT}"
    )


def _short_reason(reason: object) -> str:
    text = str(reason).strip() or type(reason).__name__
    # requests' connection errors nest several reprs; the innermost cause is the useful part.
    for marker in ("Failed to establish a new connection: ", "Connection aborted.", "Errno"):
        if marker in text:
            tail = text[text.index(marker) :]
            return tail.rstrip("')\"").split("'))")[0]
    return text.splitlines()[0][:300]


def get_client(docker_host: str | None = None, timeout: int = 600) -> docker.DockerClient:
    """A connected Docker client, or EngineError naming the address that did not answer.

    ``timeout`` is the per-request socket timeout; builds stream for minutes, so it is long.
    """
    import docker
    import requests

    address = engine_address(docker_host)
    if address.startswith("unix://") and not Path(address[len("unix://") :]).exists():
        # Checked first: docker-py leaks the socket of a failed unix connect.
        raise unreachable(docker_host, f"no socket at {address[len('unix://') :]}")
    client = None
    try:
        client = docker.DockerClient(base_url=address, timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        if client is not None:
            client.close()
        raise unreachable(docker_host, exc) from None
    return client


@contextmanager
def client_session(
    client: docker.DockerClient | None = None, docker_host: str | None = None
) -> Iterator[docker.DockerClient]:
    """The given client, or a new one that is closed when the block ends."""
    if client is not None:
        yield client
        return
    own = get_client(docker_host)
    try:
        yield own
    finally:
        own.close()


def is_connection_error(exc: BaseException) -> bool:
    """Whether an exception raised mid-operation means the engine went away."""
    import requests

    return isinstance(exc, requests.exceptions.ConnectionError | ConnectionError)


@contextmanager
def engine_errors(what: str, docker_host: str | None = None) -> Iterator[None]:
    """Turn docker-py and connection failures inside the block into EngineError.

    ``what`` names the operation ("building the image") for the message.
    """
    import docker
    import requests

    try:
        yield
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise unreachable(docker_host, exc) from None
    except docker.errors.APIError as exc:
        raise EngineError(f"the Docker engine refused {what}: {api_message(exc)}") from None
    except docker.errors.DockerException as exc:
        raise EngineError(f"Docker failed while {what}: {exc}") from None


def api_message(exc: Any) -> str:
    """The engine's own message from an APIError (its ``explanation``), without the HTTP noise."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation).strip()
    return str(exc).strip()
