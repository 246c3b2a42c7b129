"""The venv's layer plan on the real engine: a torch-only pin change leaves every other
layer's digest as it was, and two builds of the same inputs (the second with --no-cache,
as on another machine) give the same layers. Built from a small wheelhouse of stand-in
wheels (torch 2.13.0+a / +b needing nvidia-cublas, nvidia-nccl and triton), so each build
takes about a minute; the install commands, resolution and normalisation are the real ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import docker

from tests.unit.test_layers_compress import _fake_wheelhouse

EPOCH = "1700000000"


def _build(run: Any, cwd: Path, base: str, wheelhouse: Path, net: str, tag: str,
           *extra: str) -> str:  # fmt: skip
    result = run(
        "image", "cpu", "--base-image", base, "--wheelhouse", str(wheelhouse),
        "--set", "software.torch=2.13.0", "--set", "software.python=3.11",
        "--set", "image.name=aibuild-test-layers/cpu", "-t", tag,
        "--reproducible", "--json", *extra,
        cwd=cwd, env={"AIBUILD_BUILD_NETWORK": net, "SOURCE_DATE_EPOCH": EPOCH},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return str(json.loads(result.stdout)["final_image_id"])


def test_torch_only_pin_change_keeps_the_other_layers(
    docker_client: docker.DockerClient,
    base_image: str,
    wheelhouse: Path,
    build_network: str,
    tmp_path: Path,
    unique_name: str,
    docker_cleanup: Any,
) -> None:
    from tests.integration.conftest import run_aibuild

    houses = {}
    for local in ("a", "b"):
        house = _fake_wheelhouse(tmp_path / f"w{local}", local)
        for uv in wheelhouse.glob("uv-*.whl"):  # the installer each RUN fetches
            shutil.copy(uv, house / uv.name)
        houses[local] = house
    ids = {}
    for key, local, extra in (("a", "a", ()), ("b", "b", ()), ("a2", "a", ("--no-cache",))):
        tag = f"aibuild-test-layers/{unique_name}:{key}"
        ids[key] = _build(run_aibuild, tmp_path, base_image, houses[local], build_network, tag,
                          *extra)  # fmt: skip
        docker_cleanup.image(tag)
        docker_cleanup.image(ids[key])
    layers = {k: docker_client.images.get(i).attrs["RootFS"]["Layers"] for k, i in ids.items()}
    # two builds of the same inputs, the second with nothing cached: the same layers
    assert layers["a"] == layers["a2"]
    # only torch's layer and the SBOM (which lists torch's version) differ
    assert len(layers["a"]) == len(layers["b"])
    differ = [i for i, (x, y) in enumerate(zip(layers["a"], layers["b"], strict=True)) if x != y]
    assert len(differ) == 2, differ
    history = docker_client.api.history(ids["b"])[::-1]
    created = [h["CreatedBy"] for h in history if h.get("Size", 0) or "RUN" in h["CreatedBy"]]
    assert differ[-1] == len(layers["b"]) - 1  # the SBOM: the last layer
    assert any("torch==2.13.0+b" in c for c in created)
