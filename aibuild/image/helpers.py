"""Throwaway helper containers: what a base image is, which packages a built image holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aibuild import labels
from aibuild.engine import (
    api_message,
    engine_errors,
)
from aibuild.errors import BuildError
from aibuild.oci.reference import parse_reference

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


VENV_PYTHON = "/opt/venv/bin/python"


def run_script(
    client: docker.DockerClient, image: str, script: str, *, user: str | None = None
) -> tuple[int, str]:
    """Run ``/bin/sh -c script`` in a throwaway container; (exit code, stdout+stderr).

    The container is removed on every path.
    """
    with engine_errors(f"running a helper container from {image}"):
        container = client.containers.create(
            image,
            entrypoint=["/bin/sh", "-c"],
            command=[script],
            user=user,
            network_disabled=True,
            labels={labels.HELPER: "1"},
        )
        try:
            container.start()
            status = container.wait()
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        finally:
            container.remove(force=True)
    return int(status.get("StatusCode", 1)), output


@dataclass(frozen=True)
class BaseFacts:
    """What a base image is: its distro as aibuild names it, its python3, its identity."""

    image: str
    image_id: str
    digest: str | None
    os: str | None  # "debian12", "ubuntu22.04", or None when unknown
    python: str | None  # "3.11", or None when it has no python3


_PY_PROBE = "import sys; print('PYTHON=%d.%d' % sys.version_info[:2])"
_BASE_SCRIPT = f'cat /etc/os-release 2>/dev/null; python3 -c "{_PY_PROBE}" 2>/dev/null; true'


def parse_os_release(text: str) -> str | None:
    """``/etc/os-release`` -> "debian12" / "ubuntu22.04" (None when neither)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    distro = fields.get("ID", "")
    version = fields.get("VERSION_ID", "")
    if distro == "debian" and version:
        return f"debian{version.split('.')[0]}"
    if distro == "ubuntu" and version:
        return f"ubuntu{version}"
    return None


def ensure_image(client: docker.DockerClient, image: str, *, pull: bool = False) -> Any:
    """The local image ``image``, pulled when asked or when absent."""
    import docker

    with engine_errors(f"looking up {image}"):
        if not pull:
            try:
                return client.images.get(image)
            except docker.errors.ImageNotFound:
                pass
        ref = parse_reference(image)
        try:
            return client.images.pull(ref.name, tag=ref.tag)
        except docker.errors.APIError as exc:
            raise BuildError(
                f"base image {image} is not on this engine and cannot be pulled "
                f"({api_message(exc)}); to build without a registry, load or build that image "
                "locally, or build FROM a local image with --base-image IMAGE (and install "
                "Python packages from --wheelhouse DIR)"
            ) from None


def detect_base(client: docker.DockerClient, image: str, *, pull: bool = False) -> BaseFacts:
    """Run a throwaway container from ``image`` to learn its distro and python3."""
    found = ensure_image(client, image, pull=pull)
    _, output = run_script(client, found.id, _BASE_SCRIPT)
    python = None
    for line in output.splitlines():
        if line.startswith("PYTHON="):
            python = line.split("=", 1)[1].strip()
    digests = found.attrs.get("RepoDigests") or []
    return BaseFacts(
        image=image,
        image_id=found.id,
        digest=digests[0] if digests else None,
        os=parse_os_release(output),
        python=python,
    )


_INSPECT_SCRIPT = (
    f"echo '## python'; "
    f"if [ -x {VENV_PYTHON} ]; then PY={VENV_PYTHON}; else PY=python3; fi; "
    '"$PY" -m pip freeze --all 2>/dev/null || "$PY" -c '
    "\"import importlib.metadata as m; print(chr(10).join(sorted('%s==%s' % "
    "(d.metadata['Name'], d.version) for d in m.distributions())))\" 2>/dev/null; "
    "echo '## os'; dpkg-query -W -f '${Package}=${Version}\\n' 2>/dev/null; true"
)


def parse_inspection(output: str) -> tuple[list[str], list[str]]:
    """The inspection script's output -> (python packages, OS packages), each sorted."""
    python: list[str] = []
    system: list[str] = []
    target: list[str] | None = None
    for line in output.splitlines():
        line = line.strip()
        if line == "## python":
            target = python
        elif line == "## os":
            target = system
        elif line and target is not None:
            target.append(line)
    return sorted(set(python), key=str.lower), sorted(set(system))


def inspect_image(client: docker.DockerClient, image: str) -> tuple[list[str], list[str]]:
    """Exact Python packages (``pip freeze`` by the venv's python) and OS packages
    (``dpkg-query -W``) found in ``image``."""
    _, output = run_script(client, image, _INSPECT_SCRIPT)
    return parse_inspection(output)


def image_identity(client: docker.DockerClient, image: str) -> dict[str, Any]:
    """``{"ref", "id", "digest"}`` of a local image (id and digest None when it is absent)."""
    import docker

    try:
        found = client.images.get(image)
    except docker.errors.DockerException:
        return {"ref": image, "id": None, "digest": None}
    digests = found.attrs.get("RepoDigests") or []
    return {"ref": image, "id": found.id, "digest": digests[0] if digests else None}
