"""The build context tar is deterministic; build args and base facts (no engine needed)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from aibuild.errors import BuildError
from aibuild.image.build import parse_build_args, proxy_build_args
from aibuild.image.context import context_tar
from aibuild.image.helpers import parse_inspection, parse_os_release
from tests.unit.conftest import run_cli


def make_context(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (root / "b.txt").write_text("b")
    (root / "a.txt").write_text("a")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "run.sh").chmod(0o700)
    (root / "secret.key").write_text("x")
    (root / ".dockerignore").write_text("# comment\n*.key\n")


def digest(root: Path, gzip: bool = False) -> str:
    with context_tar(root, gzip=gzip) as tar:
        return hashlib.sha256(tar.read()).hexdigest()


def test_same_tree_same_bytes_whatever_the_metadata(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    make_context(one)
    make_context(two)
    os.utime(two / "a.txt", (1, 1))
    (two / "b.txt").chmod(0o600)
    assert digest(one) == digest(two)
    assert digest(one, gzip=True) == digest(two, gzip=True)
    (two / "a.txt").write_text("changed")
    assert digest(one) != digest(two)


def test_entries_sorted_normalised_and_ignored(tmp_path: Path) -> None:
    make_context(tmp_path)
    with context_tar(tmp_path) as handle, tarfile.open(fileobj=handle) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert "secret.key" not in names
    assert {"Dockerfile", ".dockerignore", "a.txt", "sub", "sub/run.sh"} <= set(names)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    modes = {m.name: m.mode for m in members}
    assert modes["sub"] == 0o755
    assert modes["sub/run.sh"] == 0o755
    assert modes["a.txt"] == 0o644


def test_no_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no Dockerfile"):
        context_tar(tmp_path)


def test_proxies_both_cases() -> None:
    env = {"https_proxy": "http://proxy:3128", "NO_PROXY": "localhost", "HOME": "/root"}
    assert proxy_build_args(env) == {
        "HTTPS_PROXY": "http://proxy:3128",
        "https_proxy": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "no_proxy": "localhost",
    }
    assert proxy_build_args({}) == {}


def test_build_args() -> None:
    assert parse_build_args(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_build_args(["novalue"])


def test_bad_build_arg_is_a_usage_error() -> None:
    result = run_cli(["image", "cpu", "--build-arg", "1X=2"])
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


def test_os_release() -> None:
    debian = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
    ubuntu = 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\n'
    assert parse_os_release(debian) == "debian12"
    assert parse_os_release(ubuntu) == "ubuntu22.04"
    assert parse_os_release("ID=alpine\nVERSION_ID=3.20.0\n") is None
    assert parse_os_release("") is None


def test_inspection_output() -> None:
    output = "## python\ntorch==2.13.0+cpu\nClick==8.5.1\n## os\nbash=5.2.15-2+b7\ndpkg=1.21.22\n"
    python, system = parse_inspection(output)
    assert python == ["Click==8.5.1", "torch==2.13.0+cpu"]
    assert system == ["bash=5.2.15-2+b7", "dpkg=1.21.22"]


def test_unreachable_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    result = run_cli(["image", "cpu"])
    assert result.exit_code == 1
    assert "cannot reach the Docker engine at tcp://127.0.0.1:1" in result.output
    assert "Traceback" not in result.output


def test_rendered_context_tars_identically(tmp_path: Path) -> None:
    """Two renders of the same plan (at different times, in different places) give
    byte-identical build contexts, so the engine's cache hits across re-renders."""
    from aibuild.image.render import write_context
    from aibuild.profile.plan import RenderOptions
    from aibuild.profile.resolve import plan_for

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    options = RenderOptions(base_image="debian:12", base_os="debian12", wheelhouse=str(wheels))
    plan = plan_for("cpu", ["software.torch=2.13.0"], options)
    first = write_context(plan, tmp_path / "one", options)
    os.utime(wheels / "demo-1.0-py3-none-any.whl", (5, 5))
    second = write_context(plan, tmp_path / "two", options)
    assert digest(first) == digest(second)
