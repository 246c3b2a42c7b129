"""The build context tar is deterministic (no engine needed)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from aibuild.errors import BuildError
from aibuild.image.context import context_tar


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
