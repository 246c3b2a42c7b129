"""Lock files without Docker: content, stability, the profile-hash check, epochs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aibuild.errors import PublishError
from aibuild.profile.plan import BuildPlan, RenderOptions
from aibuild.profile.resolve import plan_for
from aibuild.publish.lock import (
    check_lock,
    check_os_packages,
    choose_epoch,
    constraints,
    default_lock_path,
    locked_options,
    make_lock,
    read_lock,
    source_labels,
    wheel_hashes,
    write_lock,
)


@pytest.fixture
def plan() -> BuildPlan:
    return plan_for("cpu")


def _lock(plan: BuildPlan, wheelhouse: Path | None = None) -> dict[str, Any]:
    return make_lock(
        plan,
        profile="cpu",
        python=["torch==2.13.0+cpu", "pip==24.0", "numpy==2.1.0", "local @ file:///x"],
        os_packages=["bash=5.2.15-2+b2", "libc6=2.36-9"],
        base_image={"ref": "debian:12", "id": "sha256:" + "b" * 64, "digest": None},
        runtime_image={"ref": "debian:12", "id": "sha256:" + "b" * 64, "digest": None},
        epoch=1_700_000_000,
        epoch_from="test",
        image_id="sha256:" + "1" * 64,
        wheelhouse=wheelhouse,
    )


def test_lock_content_and_round_trip(plan: BuildPlan, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
    lock = _lock(plan, wheels)
    assert lock["profile"]["hash"] == plan.profile_hash
    assert [p["name"] for p in lock["python"]] == ["numpy", "pip", "torch"]
    torch = lock["python"][2]
    assert torch["version"] == "2.13.0+cpu"
    assert torch["sha256"] == [hashlib.sha256(b"wheel").hexdigest()]
    assert wheel_hashes(wheels) == {("torch", "2.13.0+cpu"): torch["sha256"]}
    assert lock["os"] == [
        {"name": "bash", "version": "5.2.15-2+b2"},
        {"name": "libc6", "version": "2.36-9"},
    ]
    path = write_lock(lock, tmp_path / "cpu.lock.json")
    assert read_lock(path) == lock
    first = path.read_bytes()
    write_lock(_lock(plan, wheels), path)
    assert path.read_bytes() == first  # no timestamp of its own: stable under re-locking


def test_constraints_and_locked_options(plan: BuildPlan) -> None:
    lock = _lock(plan)
    assert constraints(lock) == ("numpy==2.1.0", "torch==2.13.0+cpu")
    options = locked_options(lock, RenderOptions(wheelhouse="/w"))
    assert options.constraints == ("numpy==2.1.0", "torch==2.13.0+cpu")
    assert options.source_date_epoch == 1_700_000_000
    assert options.wheelhouse == "/w"


def test_check_lock_detects_a_changed_profile(plan: BuildPlan, tmp_path: Path) -> None:
    lock = _lock(plan)
    check_lock(lock, plan, tmp_path / "x.lock.json", "sha256:" + "b" * 64)
    changed = replace(plan, profile_hash="f" * 64)
    with pytest.raises(PublishError, match=r"does not match the profile any more.*aibuild lock"):
        check_lock(lock, changed, tmp_path / "x.lock.json", None)
    with pytest.raises(PublishError, match="pins the base image"):
        check_lock(lock, plan, tmp_path / "x.lock.json", "sha256:" + "c" * 64)


def test_check_os_packages(plan: BuildPlan) -> None:
    lock = _lock(plan)
    assert check_os_packages(lock, ["bash=5.2.15-2+b2", "libc6=2.36-9"]) == []
    assert check_os_packages(lock, ["bash=5.2.15-2+b3", "curl=7"]) == [
        "bash: locked 5.2.15-2+b2, built 5.2.15-2+b3",
        "curl: locked (absent), built 7",
        "libc6: locked 2.36-9, built (absent)",
    ]


def test_read_lock_errors(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="run `aibuild lock`"):
        read_lock(tmp_path / "none.lock.json")
    bad = tmp_path / "bad.lock.json"
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(PublishError, match="not an aibuild lock file"):
        read_lock(bad)


def test_default_lock_path(tmp_path: Path) -> None:
    profile = tmp_path / "team.yaml"
    profile.write_text("name: team\n")
    assert default_lock_path(str(profile)) == tmp_path / "team.lock.json"
    assert default_lock_path("gpu-a100") == Path("gpu-a100.lock.json")


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def test_epoch_and_source_labels_from_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    profile = repo / "p.yaml"
    profile.write_text("name: p\n")
    _git(repo, "init", "-q")
    _git(repo, "remote", "add", "origin", "https://user:token@git.example.com/team/p.git")
    _git(repo, "add", "p.yaml")
    when = "2024-01-02T03:04:05+00:00"
    env = {
        "GIT_AUTHOR_DATE": when,
        "GIT_COMMITTER_DATE": when,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
    }
    _git(repo, "commit", "-q", "-m", "p", env=env)
    assert choose_epoch(profile, environ={}) == (1704164645, "git commit time of p.yaml")
    assert choose_epoch(profile, 5, environ={})[0] == 5
    assert choose_epoch(profile, environ={"SOURCE_DATE_EPOCH": "7"})[0] == 7
    labels = source_labels(profile)
    assert len(labels["org.opencontainers.image.revision"]) == 40
    assert labels["org.opencontainers.image.source"] == "https://git.example.com/team/p.git"
    outside = tmp_path / "loose.yaml"
    outside.write_text("name: loose\n")
    epoch, source = choose_epoch(outside, environ={})
    assert epoch % 86400 == 0 and "UTC day" in source
