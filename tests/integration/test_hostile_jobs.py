"""Ownership labels on a real engine (issue 16): a job aibuild exported is never reaped as a
killed run, a dead run's network is reaped with its containers (by ID), and ``run --nodes``
never takes a network it did not make."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from aibuild import labels
from aibuild.run.lifecycle import reap_orphans
from aibuild.run.owner import owner_label
from tests.integration.conftest import TEST_LABEL, run_aibuild

pytestmark = pytest.mark.docker


def _dead_owner() -> str:
    """The owner label of an aibuild-like process of this user that has ended."""
    proc = subprocess.Popen(["sleep", "0.2"])
    label = owner_label(proc.pid)
    proc.wait()
    return label


@pytest.fixture
def made(docker_client: docker.DockerClient) -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            if isinstance(thing, docker.models.networks.Network):
                docker_client.api.remove_network(thing.id)
            else:
                thing.remove(force=True)


def test_an_exported_job_is_not_reaped(
    base_image: str,
    docker_client: docker.DockerClient,
    made: list[Any],
    unique_name: str,
    tmp_path: Path,
) -> None:
    """The Compose file's service, started as `docker compose up` would start it, after the
    `aibuild export` that wrote it has ended: the next `aibuild run` must leave it running."""
    result = run_aibuild("export", "compose", "cpu", "--image", base_image, timeout=60)
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["train"]
    job = docker_client.containers.run(
        base_image,
        ["sleep", "300"],
        entrypoint=[],
        detach=True,
        labels={**service["labels"], TEST_LABEL: unique_name},
    )
    made.append(job)
    said: list[str] = []
    reap_orphans(docker_client, said.append)
    job.reload()
    assert job.status == "running", said


def test_a_killed_runs_network_is_reaped_by_id(
    docker_client: docker.DockerClient, made: list[Any], unique_name: str
) -> None:
    owner = _dead_owner()
    mine = {labels.RUN: "1", labels.RUN_OWNER: owner, TEST_LABEL: unique_name}
    network = docker_client.networks.create(unique_name, driver="bridge", labels=mine)
    # another network of the same name (the engine allows it): reaping by name would be
    # ambiguous; the live one must stay
    live = {labels.RUN: "1", labels.RUN_OWNER: owner_label(), TEST_LABEL: unique_name}
    other = docker_client.networks.create(
        unique_name, driver="bridge", labels=live, check_duplicate=False
    )
    made += [network, other]
    said: list[str] = []
    reap_orphans(docker_client, said.append)
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(network.id)
    assert docker_client.networks.get(other.id).id == other.id
    assert any(unique_name in line for line in said)


def test_run_nodes_does_not_take_an_existing_network(
    base_image: str, docker_client: docker.DockerClient, made: list[Any], unique_name: str
) -> None:
    theirs = docker_client.networks.create(unique_name, driver="bridge")
    made.append(theirs)
    result = run_aibuild(
        "run",
        base_image,
        "--nodes",
        "2",
        "--name",
        unique_name,
        "--",
        "--epochs",
        "1",
        timeout=120,
    )
    assert result.returncode == 1
    assert "exists already" in result.stderr and "Traceback" not in result.stderr
    assert docker_client.networks.get(theirs.id).id == theirs.id
