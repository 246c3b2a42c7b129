"""One reproducible image from three engines: the cpu profile built ``--reproducible
--no-cache --push`` on Docker 20.10, Docker 26 with the classic store and Docker 26 with
the containerd image store, each on its own engine (not a ``docker load`` of one build),
gives one registry digest.

The torch step is left out by a user template, as in test_reproducible's default-tier
test, so that three cold builds fit in minutes; the heavy tier builds torch.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.integration.conftest import CPU_SETS
from tests.integration.test_reproducible import EPOCH, TORCH_FREE, _aibuild, _snapshot_source

pytestmark = pytest.mark.engines


def _config(registry: Any, repository: str, digest: str) -> dict[str, Any]:
    manifest = registry.api(
        f"/v2/{repository}/manifests/{digest}",
        accept="application/vnd.docker.distribution.manifest.v2+json",
    )
    return registry.api(f"/v2/{repository}/blobs/{manifest['config']['digest']}")  # type: ignore[no-any-return]


def test_cpu_reproducible_build_gives_one_digest_on_every_engine(
    engine_hosts: dict[str, str],
    base_image: str,
    wheelhouse: Path,
    build_network: str,
    registry: Any,
    tmp_path: Path,
    unique_name: str,
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "Dockerfile.j2").write_text(TORCH_FREE)
    code = _snapshot_source(tmp_path / "src")
    pushed: dict[str, str] = {}
    repos: dict[str, str] = {}
    for engine, host in engine_hosts.items():
        # One image name everywhere: it is in the image (its profile.yaml and label).
        repos[engine] = f"engines/{unique_name}"
        source = (
            "--base-image", base_image, "--wheelhouse", str(wheelhouse), "--template-dir",
            str(templates), *CPU_SETS, "--set", f"image.name={registry.repo(repos[engine])}",
        )  # fmt: skip
        work = tmp_path / engine
        work.mkdir()
        built = _aibuild(
            "image", "cpu", *source, "--reproducible", "--no-cache", "--push", "--json",
            cwd=work, network=build_network, source=code, epoch=EPOCH,
            docker_host=host,
        )  # fmt: skip
        assert built.returncode == 0, f"{engine}: {built.stderr[-3000:]}"
        assert "Traceback" not in built.stderr
        result = json.loads(built.stdout)
        (pinned,) = result["pushed"]
        pushed[engine] = pinned.rpartition("@")[2]
        client = docker.DockerClient(base_url=host)
        try:
            client.api.remove_image(result["final_image_id"], force=True)
            with contextlib.suppress(docker.errors.APIError):  # the SBOM image is its child
                client.api.remove_image(result["image_id"], force=True)
        finally:
            client.close()
    print("digests:", json.dumps(pushed, indent=1))
    first = next(iter(pushed))
    if len(set(pushed.values())) != 1:  # say what differs: the configs, then the layers
        configs = {e: _config(registry, repos[e], d) for e, d in pushed.items()}
        report = {
            engine: {
                key: value for key, value in config.items() if value != configs[first].get(key)
            }
            for engine, config in configs.items()
            if engine != first
        }
        pytest.fail(f"digests differ: {pushed}; config fields unlike {first}'s: {report}")


def test_doctor_names_each_engines_version_api_and_image_store(
    engine_hosts: dict[str, str], aibuild_cli: Any, tmp_path: Path
) -> None:
    expected = {
        "docker20.10": ("20.10", "classic"),
        "docker26-classic": ("26.", "classic"),
        "docker26-containerd": ("26.", "containerd"),
    }
    for engine, host in engine_hosts.items():
        doctor = aibuild_cli("doctor", "--json", cwd=tmp_path, env={"DOCKER_HOST": host})
        assert "Traceback" not in doctor.stderr
        report = json.loads(doctor.stdout)
        version, store = expected[engine]
        assert report["engine"]["version"].startswith(version), report["engine"]
        assert report["engine"]["image_store"] == store
        assert report["engine"]["api_version"]
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["image store"]["detail"].startswith(store)
        end_of_life = [c for c in report["checks"] if "end of life" in c["detail"]]
        assert bool(end_of_life) == (engine == "docker20.10")
        # zstd layers pull from Docker 23.0 on: 20.10 cannot, 26.1 can
        assert report["engine"]["pulls_zstd"] is (engine != "docker20.10")
        assert checks["pulls zstd"]["detail"].startswith(
            "no:" if engine == "docker20.10" else "yes:"
        )
