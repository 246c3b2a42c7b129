"""Golden Dockerfiles: every built-in profile renders byte for byte as committed.

Regenerate with `make goldens` (python tests/unit/regen_goldens.py) and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aibuild.image.render import render_dockerfile
from aibuild.profile.load import builtin_profiles
from aibuild.profile.resolve import plan_for

GOLDENS = Path(__file__).resolve().parent / "goldens"
BUILTINS = sorted(builtin_profiles())


def test_there_is_a_golden_for_every_builtin_and_no_other() -> None:
    assert sorted(p.stem for p in GOLDENS.glob("*.Dockerfile")) == BUILTINS
    assert "cpu" in BUILTINS and "gpu-a100" in BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_golden(name: str) -> None:
    expected = (GOLDENS / f"{name}.Dockerfile").read_bytes()
    got = render_dockerfile(plan_for(name)).encode("utf-8")
    assert got == expected, (
        f"{name}: rendered Dockerfile differs from its golden; run `make goldens` and review"
    )


def test_rendering_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        render_dockerfile(plan_for("gpu-a100")).encode()
        == (GOLDENS / "gpu-a100.Dockerfile").read_bytes()
    )
