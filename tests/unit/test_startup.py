"""Start-up stays light: the CLI imports none of docker, torch, jinja2 until a command
needs them; and the wheel ships what the CLI needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("docker", "torch", "jinja2")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_cli_is_light() -> None:
    assert _heavy_after("import aibuild.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["profiles"], ["check", "gpu-a100"]])
def test_commands_without_engine_are_light(argv: list[str]) -> None:
    body = (
        "import contextlib, io\nfrom aibuild.cli import main\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
    )
    heavy = _heavy_after(body)
    assert heavy == [], f"aibuild {' '.join(argv)} imported {heavy}"


def test_probe_detects_a_heavy_import() -> None:
    assert _heavy_after("import jinja2") == ["jinja2"]


@pytest.mark.slow
def test_wheel_ships_templates_and_profiles(tmp_path: Path) -> None:
    """The built wheel, installed in a fresh venv, renders a built-in profile from anywhere."""
    root = Path(__file__).resolve().parents[2]
    wheels = tmp_path / "whl"
    wheels.mkdir()
    # hatchling's PEP 517 hook directly (what `pip wheel .` calls, without pip's isolated env)
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from hatchling.build import build_wheel; print(build_wheel({str(wheels)!r}))",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("aibuild-*.whl")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(venv / "bin" / "aibuild"), "render", "gpu-a100"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (Path(__file__).parent / "goldens" / "gpu-a100.Dockerfile").read_text()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import aibuild; print(aibuild.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.strip().startswith(str(venv)), (
        "the test must use the installed wheel, not the checkout"
    )
