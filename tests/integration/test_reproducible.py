"""Reproducible images on the real engine: two ``--no-cache`` builds of the same
Dockerfile differ; normalised, they are the same image ID, push to the same registry
digest from fresh blob caches, and still run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner

from aibuild.cli import cli
from aibuild.labels import REPRODUCIBLE
from aibuild.oci.archive import BlobCache
from aibuild.oci.media import rfc3339
from aibuild.publish.diff import snapshot
from aibuild.publish.normalise import normalise_image
from aibuild.publish.push import direct_push

EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z

# Everything the facts say differs between two naive builds: apt caches and logs,
# ldconfig's aux-cache, timestamp .pyc files (py3compile in python3-minimal's
# postinst), mtimes of files written by RUN; plus what must survive: a hard link,
# a symlink, a setuid mode, a non-root owner, a whiteout (a deleted base file).
DOCKERFILE = """\
FROM {base}
RUN apt-get update && apt-get install -y --no-install-recommends python3-minimal && ldconfig
RUN mkdir -p /opt/app/bin && echo 'print("ok from the normalised image")' > /opt/app/hello.py \\
 && echo data > /opt/app/data && ln /opt/app/data /opt/app/bin/data-link \\
 && ln -s ../hello.py /opt/app/bin/hello \\
 && cp /bin/true /opt/app/bin/suid && chmod 4755 /opt/app/bin/suid \\
 && chown 1000:1000 /opt/app/data && rm /etc/issue.net
COPY note.txt /opt/app/note.txt
"""


def _build(client: docker.DockerClient, context: Path, network: str) -> str:
    image, _ = client.images.build(
        path=str(context), nocache=True, rm=True, forcerm=True, network_mode=network
    )
    return str(image.id)


@pytest.fixture(scope="module")
def two_builds(
    docker_client: docker.DockerClient,
    base_image: str,
    build_network: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """Two --no-cache builds of one Dockerfile, and each normalised (module-scoped:
    the builds take a minute)."""
    context = tmp_path_factory.mktemp("context")
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=base_image))
    (context / "note.txt").write_text("copied\n")
    raw = [_build(docker_client, context, build_network) for _ in range(2)]
    normalised = [
        normalise_image(docker_client, image, source_date_epoch=EPOCH, base=base_image, tags=[])
        for image in raw
    ]
    yield raw, normalised
    for ref in [*raw, *(n.image_id for n in normalised)]:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.api.remove_image(ref, force=True)


def test_two_no_cache_builds_differ_then_normalise_to_one_image_id(two_builds: Any) -> None:
    raw, normalised = two_builds
    assert raw[0] != raw[1]
    assert normalised[0].image_id == normalised[1].image_id
    assert normalised[0].base_layers == 1
    dropped = {path for layer in normalised[0].layers for path in layer.dropped}
    assert "var/cache/ldconfig/aux-cache" in dropped
    assert "var/cache/apt/pkgcache.bin" in dropped
    assert "var/log/dpkg.log" in dropped
    assert any(path.endswith(".pyc") for path in dropped)


def test_diff_names_what_differs_between_the_raw_builds(
    docker_client: docker.DockerClient, two_builds: Any
) -> None:
    raw, normalised = two_builds
    result = CliRunner().invoke(cli, ["diff", raw[0], raw[1], "--json", "--exit-code"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    fields = {change["what"] for change in report["config"]}
    assert "created" in fields
    assert report["layers"] and report["layers"][0]["index"] == 1  # the base layer is equal
    changed = {c["what"] for layer in report["layers"] for c in layer["files"]}
    assert "var/cache/ldconfig/aux-cache" in changed
    assert "opt/app/hello.py" in changed  # its mtime
    same = CliRunner().invoke(cli, ["diff", normalised[0].image_id, normalised[1].image_id])
    assert same.exit_code == 0
    assert same.stdout.startswith("identical:")


def test_normalised_layers_keep_metadata_and_clamp_times(
    docker_client: docker.DockerClient, base_image: str, two_builds: Any
) -> None:
    _, normalised = two_builds
    snap = snapshot(docker_client, normalised[0].image_id)
    base_layers = docker_client.images.get(base_image).attrs["RootFS"]["Layers"]
    assert snap.layers[0].diff_id == base_layers[0]  # the base, byte for byte
    assert snap.config["created"] == rfc3339(EPOCH)
    assert {h["created"] for h in snap.config["history"]} == {rfc3339(EPOCH)}
    assert "container_config" not in snap.config and "container" not in snap.config
    assert snap.config["config"]["Labels"][REPRODUCIBLE] == str(EPOCH)
    files = {path: entry for layer in snap.layers[1:] for path, entry in layer.files.items()}
    assert all(entry.mtime <= EPOCH for entry in files.values())
    assert files["opt/app/bin/suid"].mode == oct(0o4755)
    assert files["opt/app/data"].owner == "1000:1000" or files["opt/app/bin/data-link"].owner == (
        "1000:1000"
    )
    links = [e for e in files.values() if e.kind == "hardlink"]
    assert {e.path for e in links} & {"opt/app/data", "opt/app/bin/data-link"}
    assert files["opt/app/bin/hello"].kind == "symlink"
    assert "etc/.wh.issue.net" in files  # the whiteout survives
    # Where a raw layer's entries were not sorted, the normalised one is.
    for layer in snap.layers[1:]:
        assert list(layer.files) == sorted(layer.files) or any(
            e.kind == "hardlink" for e in layer.files.values()
        )


def test_normalised_image_runs(docker_client: docker.DockerClient, two_builds: Any) -> None:
    _, normalised = two_builds
    output = docker_client.containers.run(
        normalised[0].image_id,
        ["sh", "-c", "python3 /opt/app/bin/hello && cat /opt/app/bin/data-link /opt/app/note.txt"],
        remove=True,
        network_disabled=True,
    )
    assert output.decode().split() == ["ok", "from", "the", "normalised", "image", "data", "copied"]


def test_pushed_from_fresh_caches_to_two_registries_gives_one_digest(
    docker_client: docker.DockerClient,
    two_builds: Any,
    registry: Any,
    disposable_registry: Any,
    tmp_path: Path,
    unique_name: str,
) -> None:
    _, normalised = two_builds
    first = direct_push(
        docker_client,
        normalised[0].image_id,
        registry.repo(f"repro/{unique_name}:a"),
        cache=BlobCache(tmp_path / "cache-a"),
    )
    second = direct_push(
        docker_client,
        normalised[1].image_id,
        disposable_registry.repo(f"repro/{unique_name}:b"),
        cache=BlobCache(tmp_path / "cache-b"),
    )
    assert first.digest == second.digest
    assert registry.manifest_digest(f"repro/{unique_name}", "a") == first.digest
    assert disposable_registry.manifest_digest(f"repro/{unique_name}", "b") == first.digest


def test_normalising_twice_changes_nothing(
    docker_client: docker.DockerClient, base_image: str, two_builds: Any
) -> None:
    _, normalised = two_builds
    again = normalise_image(
        docker_client, normalised[0].image_id, source_date_epoch=EPOCH, base=base_image, tags=[]
    )
    assert again.image_id == normalised[0].image_id


# ------------------------------------------------------- the cpu profile with torch

CPU_SETS = (
    "--set",
    "software.torch=2.13.0",
    "--set",
    "software.python=3.11",
    "--set",
    "image.name=aibuild-test/repro-cpu",
)


def _snapshot_source(dest: Path) -> Path:
    """A frozen copy of aibuild (package, templates, profiles). The image embeds
    aibuild's own code, so builds from a working tree edited between them differ, and
    rightly: the two builds must come from one snapshot."""
    root = Path(__file__).resolve().parents[2]
    for name in ("aibuild", "templates", "profiles"):
        shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _aibuild(
    *args: str,
    cwd: Path,
    network: str,
    cache: Path | None = None,
    source: Path | None = None,
    epoch: int | None = None,
    docker_host: str | None = None,
) -> Any:
    """The real CLI in a subprocess (from ``source`` when given); its own blob cache
    (``cache``, default under cwd); SOURCE_DATE_EPOCH only when ``epoch`` is given."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    env["AIBUILD_BUILD_NETWORK"] = network
    if source is not None:
        env["PYTHONPATH"] = str(source)
    env["AIBUILD_CACHE_DIR"] = str(cache or cwd / "blob-cache")
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )


TORCH_FREE = '{% extends "aibuild/Dockerfile.j2" %}\n{% block torch %}{% endblock %}\n'


def test_reproducible_cli_without_torch_gives_one_image_and_one_digest(
    docker_client: docker.DockerClient,
    base_image: str,
    wheelhouse: Path,
    build_network: str,
    registry: Any,
    tmp_path: Path,
    unique_name: str,
) -> None:
    """The whole `aibuild image --reproducible --no-cache --push` pipeline (render,
    build, record, SBOM, normalise, push) twice, on the cpu profile with its torch step
    left out by a user template (--template-dir) so that it runs in the default tier:
    one image ID, the SBOM in the image and beside the record, one registry digest."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "Dockerfile.j2").write_text(TORCH_FREE)
    code = _snapshot_source(tmp_path / "src")
    name = registry.repo(f"repro/{unique_name}")
    source = (
        "--base-image", base_image, "--wheelhouse", str(wheelhouse), "--template-dir",
        str(templates), *CPU_SETS[:4], "--set", f"image.name={name}",
    )  # fmt: skip
    ids, pinned = [], []
    for attempt in range(2):
        built = _aibuild(
            "image", "cpu", *source, "--reproducible", "--no-cache", "--push", "--json",
            cwd=tmp_path, network=build_network, source=code, epoch=EPOCH,
            cache=tmp_path / f"cache-{attempt}",
        )  # fmt: skip
        assert built.returncode == 0, built.stderr[-3000:]
        assert "Traceback" not in built.stderr
        result = json.loads(built.stdout)
        ids.append(result["final_image_id"])
        pinned.extend(result["pushed"])
        assert result["final_image_id"] != result["image_id"]  # the normalised one
    assert ids[0] == ids[1]
    assert len(pinned) == 2 and pinned[0] == pinned[1], pinned
    digest = pinned[0].rpartition("@")[2]
    assert registry.manifest_digest(f"repro/{unique_name}", "cpu-torch2.13.0-cpu") == digest
    config = docker_client.images.get(ids[0]).attrs["Config"]
    assert config["Labels"][REPRODUCIBLE] == str(EPOCH)
    record = json.loads((tmp_path / ".aibuild" / "builds" / "latest.json").read_text())
    assert record["reproducible"]["image_id"] == ids[0]
    assert [p["pinned"] for p in record["pushes"]] == [pinned[0]]
    sbom = json.loads((tmp_path / record["sbom"]).read_text())
    names = {c["name"].lower() for c in sbom["components"]}
    assert {"click", "pyyaml", "libc6"} <= names and "torch" not in names
    docker_client.api.remove_image(ids[0], force=True)


@pytest.mark.heavy
def test_cpu_profile_reproducible_builds_are_identical_and_run_torch(
    docker_client: docker.DockerClient,
    base_image: str,
    wheelhouse: Path,
    build_network: str,
    registry: Any,
    tmp_path: Path,
    unique_name: str,
) -> None:
    """The real thing: lock the cpu profile, build it twice with --reproducible
    --no-cache at the lock's SOURCE_DATE_EPOCH, get one image ID, one registry digest
    from fresh blob caches, an SBOM in the image, and torch that imports; a changed
    profile fails --locked."""
    source = ("--base-image", base_image, "--wheelhouse", str(wheelhouse), *CPU_SETS)
    code = _snapshot_source(tmp_path / "src")
    locked = _aibuild(
        "lock",
        "cpu",
        *source,
        "--source-date-epoch",
        str(EPOCH),
        cwd=tmp_path,
        network=build_network,
        source=code,
    )
    assert locked.returncode == 0, locked.stderr[-3000:]
    lock = json.loads((tmp_path / "cpu.lock.json").read_text())
    assert lock["source_date_epoch"] == EPOCH
    torch_pin = next(p for p in lock["python"] if p["name"] == "torch")
    assert torch_pin["version"] == "2.13.0+cpu" and torch_pin["sha256"]
    assert any(p["name"] == "libc6" for p in lock["os"])

    ids = []
    for _ in range(2):
        built = _aibuild(
            "image",
            "cpu",
            *source,
            # Not --locked: written while the renderer used constraints.txt before
            # copying it (fixed in 841a31b; a --locked --push variant ran out of disk
            # here). The lock's epoch comes through the environment.
            "--reproducible",
            "--no-cache",
            "-q",
            cwd=tmp_path,
            network=build_network,
            source=code,
            epoch=lock["source_date_epoch"],
        )
        assert built.returncode == 0, built.stderr[-3000:]
        ids.append(built.stdout.strip().splitlines()[-1])
    assert ids[0] == ids[1], _aibuild(
        "diff", ids[0], ids[1], cwd=tmp_path, network=build_network, source=code
    ).stdout[-3000:]
    image_id = ids[0]

    labels = docker_client.images.get(image_id).attrs["Config"]["Labels"]
    assert labels[REPRODUCIBLE] == str(EPOCH)
    sbom_path = labels["ai.aibuild.sbom"]
    out = (
        docker_client.containers.run(
            image_id,
            [
                "-c",
                f"import json, torch; print(torch.__version__); "
                f"print(len(json.load(open('{sbom_path}'))['components']))",
            ],
            entrypoint=["python"],
            remove=True,
            network_disabled=True,
        )
        .decode()
        .split()
    )
    assert out[0] == "2.13.0+cpu"
    assert int(out[1]) == len(lock["python"]) + len(lock["os"])

    record = json.loads((tmp_path / ".aibuild" / "builds" / "latest.json").read_text())
    assert record["reproducible"]["image_id"] == image_id
    assert (tmp_path / record["sbom"]).is_file()  # relative to the build's cwd

    digests = []
    for name in ("a", "b"):
        # A fresh blob cache for each push: the layers are compressed again and must
        # come out byte for byte the same.
        pushed = _aibuild(
            "push",
            image_id,
            "--to",
            registry.repo(f"repro/{unique_name}-{name}:v1"),
            cwd=tmp_path,
            network=build_network,
            source=code,
            cache=tmp_path / f"cache-{name}",
        )
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        digests.append(pushed.stdout.strip().rpartition("@")[2])
    assert digests[0] == digests[1]
    assert registry.manifest_digest(f"repro/{unique_name}-b", "v1") == digests[0]

    changed = _aibuild(
        "image",
        "cpu",
        *source,
        "--set",
        "training.epochs=99",
        "--locked",
        cwd=tmp_path,
        network=build_network,
        source=code,
    )
    assert changed.returncode == 1
    assert "does not match the profile any more" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_normalising_into_a_blob_cache_saves_the_export_at_push(
    docker_client: docker.DockerClient,
    base_image: str,
    two_builds: Any,
    registry: Any,
    tmp_path: Path,
    unique_name: str,
) -> None:
    raw, normalised = two_builds
    cache = BlobCache(tmp_path / "cache")
    again = normalise_image(
        docker_client, raw[0], source_date_epoch=EPOCH, base=base_image, tags=[], cache=cache
    )
    assert again.image_id == normalised[0].image_id
    lines: list[str] = []
    pushed = direct_push(
        docker_client,
        again.image_id,
        registry.repo(f"repro/{unique_name}:cached"),
        cache=cache,
        log=lines.append,
    )
    assert not any(line.startswith("exporting") for line in lines), lines
    assert registry.manifest_digest(f"repro/{unique_name}", "cached") == pushed.digest
