"""A zstd image that aibuild pushed is pulled and run by a Docker 26 engine with the
containerd image store (the engine fresh Docker installs use), and its manifest says OCI
with ``+zstd`` layers. The Docker 26 engine runs beside the system one:
``../shared/recipes/docker-modern.sh up containerd`` (its DOCKER_HOST in
$AIBUILD_TEST_MODERN_DOCKER_HOST, else the recipe's default socket)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import docker
import pytest

from aibuild.oci.archive import BlobCache
from aibuild.oci.media import LAYER_OCI_ZSTD, MANIFEST_OCI
from aibuild.publish.push import direct_push

MODERN_SOCKET = "/var/lib/docker-modern-containerd/docker.sock"


@pytest.fixture
def modern_client() -> Any:
    host = os.environ.get("AIBUILD_TEST_MODERN_DOCKER_HOST") or f"unix://{MODERN_SOCKET}"
    if host == f"unix://{MODERN_SOCKET}" and not Path(MODERN_SOCKET).exists():
        pytest.fail(
            "no Docker 26 containerd engine: run ../shared/recipes/docker-modern.sh up "
            "containerd (or set AIBUILD_TEST_MODERN_DOCKER_HOST)",
            pytrace=False,
        )
    client = docker.DockerClient(base_url=host, version="auto", timeout=600)
    yield client
    client.close()


def test_zstd_image_pushed_by_aibuild_is_pulled_and_run_by_docker_26(
    docker_client: docker.DockerClient,
    modern_client: docker.DockerClient,
    base_image: str,
    registry: Any,
    unique_name: str,
    docker_cleanup: Any,
    tmp_path: Path,
) -> None:
    version = modern_client.version()
    assert int(version["Version"].split(".")[0]) >= 23, version["Version"]
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN mkdir -p /opt/app && echo zstd-ok > /opt/app/stamp\n"
    )
    image, _ = docker_client.images.build(path=str(context), rm=True, labels=docker_cleanup.label)
    docker_cleanup.image(image.id)
    target = registry.repo(f"{unique_name}-zstd") + ":v1"
    result = direct_push(
        docker_client, image.id, target, cache=BlobCache(tmp_path / "cache", "zstd")
    )
    data = registry.api(
        f"/v2/{unique_name}-zstd/manifests/v1", accept="application/vnd.oci.image.manifest.v1+json"
    )
    assert data["mediaType"] == MANIFEST_OCI
    assert {layer["mediaType"] for layer in data["layers"]} == {LAYER_OCI_ZSTD}
    pinned = result.pinned
    try:
        modern_client.images.pull(pinned)
        output = modern_client.containers.run(pinned, ["cat", "/opt/app/stamp"], remove=True)
        assert output.decode().strip() == "zstd-ok"
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            modern_client.images.remove(pinned, force=True)
