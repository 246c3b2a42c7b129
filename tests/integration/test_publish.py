"""Publishing against real registries (Debian's docker-registry on 127.0.0.1) and the
real engine: push without auth, with htpasswd auth, through a registry stopped and
restarted mid-push; manifests read back through the registry's HTTP API."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner

from aibuild.cli import cli
from aibuild.errors import PublishError
from aibuild.image.record import find_records
from aibuild.oci.archive import BlobCache
from aibuild.oci.registry import RetryPolicy
from aibuild.publish.push import direct_push

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def build_small(
    client: docker.DockerClient, base: str, tmp: Path, cleanup: Any, *, payload_mb: int = 0
) -> str:
    """A small image on the test base: a RUN that writes files, a COPY, an optional
    incompressible payload layer (to make a push take a while). Returns its ID."""
    context = tmp / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "hello.txt").write_text("hello from aibuild\n")
    payload = ""
    if payload_mb:
        (context / "payload.bin").write_bytes(os.urandom(payload_mb << 20))
        payload = "COPY payload.bin /opt/payload.bin\n"
    (context / "Dockerfile").write_text(
        f"FROM {base}\n"
        "RUN mkdir -p /opt/app && echo built > /opt/app/stamp && chmod 0640 /opt/app/stamp\n"
        "COPY hello.txt /opt/app/hello.txt\n"
        f"{payload}"
        'LABEL ai.aibuild.test="publish"\n'
    )
    image, _ = client.images.build(path=str(context), rm=True, forcerm=True, labels=cleanup.label)
    cleanup.image(image.id)
    return str(image.id)


@pytest.fixture
def small_image(
    docker_client: docker.DockerClient, base_image: str, tmp_path: Path, docker_cleanup: Any
) -> str:
    return build_small(docker_client, base_image, tmp_path, docker_cleanup)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or blob cache from the machine leak in: an empty Docker config, a
    fresh blob cache, no registry variables; and a cwd of the test's own (records)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("AIBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AIBUILD_REGISTRY_USER", raising=False)
    monkeypatch.delenv("AIBUILD_REGISTRY_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)


def run_cli(args: list[str], stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, args, input=stdin, catch_exceptions=False)


def manifest(registry: Any, repository: str, tag: str) -> dict[str, Any]:
    # The containerd store's engine push sends an OCI manifest.
    accept = f"{MANIFEST_V2}, application/vnd.oci.image.manifest.v1+json"
    data: dict[str, Any] = registry.api(f"/v2/{repository}/manifests/{tag}", accept=accept)
    return data


@pytest.mark.parametrize("method", ["direct", "engine"])
def test_push_without_auth_prints_the_digest_the_registry_serves(
    docker_client: docker.DockerClient,
    registry: Any,
    small_image: str,
    unique_name: str,
    method: str,
) -> None:
    target = registry.repo(f"publish/{unique_name}:v1")
    result = run_cli(["push", small_image, "--to", target, "--method", method])
    assert result.exit_code == 0, result.output
    printed = result.stdout.strip().splitlines()[-1]
    name, _, digest = printed.partition("@")
    assert name == registry.repo(f"publish/{unique_name}")
    assert digest.startswith("sha256:") and len(digest) == 71
    assert registry.manifest_digest(f"publish/{unique_name}", "v1") == digest
    served = manifest(registry, f"publish/{unique_name}", "v1")
    attrs = docker_client.images.get(small_image).attrs
    # The image ID is the config digest (classic store) or the engine's manifest digest
    # (containerd store): the pushed config is this image's either way.
    config = registry.api(f"/v2/publish/{unique_name}/blobs/{served['config']['digest']}")
    assert config["rootfs"]["diff_ids"] == attrs["RootFS"]["Layers"]
    assert attrs["Id"] in {served["config"]["digest"], digest} or method == "direct"
    assert len(served["layers"]) == len(attrs["RootFS"]["Layers"])
    # Per-layer progress went to stderr.
    assert "ushed" in result.stderr


def test_direct_push_of_the_same_image_twice_gives_the_same_digest_and_skips_blobs(
    registry: Any,
    small_image: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = run_cli(
        [
            "push",
            small_image,
            "--to",
            registry.repo(f"publish/{unique_name}:a"),
            "--method",
            "direct",
            "--json",
        ]
    )
    assert first.exit_code == 0, first.output
    # A fresh cache: the layers are compressed again, and must come out the same.
    monkeypatch.setenv("AIBUILD_CACHE_DIR", str(tmp_path / "cache-2"))
    second = run_cli(
        [
            "push",
            small_image,
            "--to",
            registry.repo(f"publish/{unique_name}:b"),
            "--method",
            "direct",
            "--json",
        ]
    )
    assert second.exit_code == 0, second.output
    a, b = json.loads(first.stdout)[0], json.loads(second.stdout)[0]
    assert a["digest"] == b["digest"]
    assert b["layers_pushed"] == 0 and b["layers_existing"] == a["layers_pushed"]


def test_auth_registry_wrong_password_fails_with_a_clear_message(
    auth_registry: Any, small_image: str, unique_name: str
) -> None:
    repo = f"publish/{unique_name}"
    result = run_cli(
        [
            "push",
            small_image,
            "--to",
            auth_registry.repo(f"{repo}:v1"),
            "--method",
            "direct",
            "--username",
            auth_registry.username,
            "--password-stdin",
        ],
        stdin="not-the-password\n",
    )
    assert result.exit_code == 1
    assert "rejected the credentials of user" in result.stderr
    assert "not-the-password" not in result.output
    assert "Traceback" not in result.output
    assert auth_registry.tags(repo) == []


def test_auth_registry_without_credentials_says_how_to_log_in(
    auth_registry: Any, small_image: str, unique_name: str
) -> None:
    result = run_cli(["push", small_image, "--to", auth_registry.repo(f"p/{unique_name}:v1")])
    assert result.exit_code == 1
    assert "requires authentication" in result.stderr or "refused anonymous" in result.stderr


@pytest.mark.parametrize("method", ["direct", "engine"])
def test_auth_registry_right_password_from_stdin(
    auth_registry: Any, small_image: str, unique_name: str, method: str
) -> None:
    repo = f"publish/{unique_name}"
    result = run_cli(
        [
            "push",
            small_image,
            "--to",
            auth_registry.repo(f"{repo}:v1"),
            "--method",
            method,
            "--username",
            auth_registry.username,
            "--password-stdin",
        ],
        stdin=f"{auth_registry.password}\n",
    )
    assert result.exit_code == 0, result.output
    digest = result.stdout.strip().rpartition("@")[2]
    assert auth_registry.manifest_digest(repo, "v1") == digest
    assert auth_registry.password not in result.output


def test_auth_from_environment_and_from_docker_config(
    auth_registry: Any,
    small_image: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = f"publish/{unique_name}"
    monkeypatch.setenv("AIBUILD_REGISTRY_USER", auth_registry.username)
    monkeypatch.setenv("AIBUILD_REGISTRY_PASSWORD", auth_registry.password)
    by_env = run_cli(
        ["push", small_image, "--to", auth_registry.repo(f"{repo}:env"), "--method", "direct"]
    )
    assert by_env.exit_code == 0, by_env.output
    monkeypatch.delenv("AIBUILD_REGISTRY_USER")
    monkeypatch.delenv("AIBUILD_REGISTRY_PASSWORD")
    config = tmp_path / "docker-config"
    config.mkdir()
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode())
    (config / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token.decode()}}})
    )
    by_config = run_cli(
        ["push", small_image, "--to", auth_registry.repo(f"{repo}:cfg"), "--method", "direct"]
    )
    assert by_config.exit_code == 0, by_config.output
    assert auth_registry.tags(repo) == ["cfg", "env"]
    assert by_env.stdout.rpartition("@")[2] == by_config.stdout.rpartition("@")[2]


def test_unknown_registry_fails_at_once(small_image: str) -> None:
    started = time.monotonic()
    result = run_cli(
        ["push", small_image, "--to", "no-such-registry.invalid/x/y:z", "--method", "direct"]
    )
    assert result.exit_code == 1
    assert "unknown registry no-such-registry.invalid" in result.stderr
    assert time.monotonic() - started < 10  # no retries for a name that does not resolve


def test_push_survives_a_registry_stopped_and_restarted_mid_push(
    docker_client: docker.DockerClient,
    base_image: str,
    tmp_path: Path,
    docker_cleanup: Any,
    disposable_registry: Any,
    registry_control: Any,
) -> None:
    image = build_small(docker_client, base_image, tmp_path, docker_cleanup, payload_mb=64)
    events: list[str] = []
    stopped = threading.Event()
    restarter: list[threading.Thread] = []

    def log(line: str) -> None:
        events.append(line)
        # Once the first layer is in, take the registry away under the push and bring
        # it back 3 s later: the push must ride it out on its retries.
        if "pushing layer 2/" in line and not stopped.is_set():
            stopped.set()
            registry_control.stop(disposable_registry.name)

            def restart() -> None:
                time.sleep(3)
                registry_control.start(disposable_registry.name)

            thread = threading.Thread(target=restart)
            thread.start()
            restarter.append(thread)

    result = direct_push(
        docker_client,
        image,
        disposable_registry.repo("publish/restart:v1"),
        retry=RetryPolicy(attempts=10, initial=0.5, max_delay=4),
        cache=BlobCache(tmp_path / "cache"),
        log=log,
    )
    for thread in restarter:
        thread.join()
    assert stopped.is_set()
    assert any("retrying in" in line for line in events), events
    assert disposable_registry.manifest_digest("publish/restart", "v1") == result.digest
    served = manifest(disposable_registry, "publish/restart", "v1")
    assert len(served["layers"]) == len(docker_client.images.get(image).attrs["RootFS"]["Layers"])


def test_failed_push_leaves_no_tag(
    docker_client: docker.DockerClient,
    small_image: str,
    tmp_path: Path,
    disposable_registry: Any,
    registry_control: Any,
) -> None:
    def log(line: str) -> None:
        if "pushing layer 2/" in line and registry_control.is_running(disposable_registry.name):
            registry_control.stop(disposable_registry.name)

    with pytest.raises(PublishError, match="failed after 3 attempts"):
        direct_push(
            docker_client,
            small_image,
            disposable_registry.repo("publish/partial:v1"),
            retry=RetryPolicy(attempts=3, initial=0.2),
            cache=BlobCache(tmp_path / "cache"),
            log=log,
        )
    registry_control.start(disposable_registry.name)
    assert disposable_registry.tags("publish/partial") == []


def test_digest_goes_into_the_build_record(
    registry: Any, small_image: str, unique_name: str, tmp_path: Path
) -> None:
    records = tmp_path / ".aibuild" / "builds"
    records.mkdir(parents=True)
    record = records / f"small-20260101T000000Z-{small_image[7:19]}.json"
    record.write_text(json.dumps({"aibuild_record": 1, "image_id": small_image, "tags": []}))
    result = run_cli(["push", small_image, "--to", registry.repo(f"publish/{unique_name}:rec")])
    assert result.exit_code == 0, result.output
    assert find_records(small_image, records) == [record]
    pushes = json.loads(record.read_text())["pushes"]
    assert pushes == [
        {
            "ref": registry.repo(f"publish/{unique_name}:rec"),
            "digest": result.stdout.strip().rpartition("@")[2],
            "pinned": result.stdout.strip(),
            "method": "engine",
        }
    ]
