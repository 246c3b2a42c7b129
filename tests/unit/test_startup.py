"""Start-up stays light: the CLI imports none of docker, torch, jinja2 until a command needs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("docker", "torch", "jinja2")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_cli_is_light() -> None:
    assert _heavy_after("import aibuild.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["profiles"], ["check", "gpu-a100"]])
def test_commands_without_engine_are_light(argv: list[str]) -> None:
    body = (
        "import contextlib, io\nfrom aibuild.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
    )
    heavy = _heavy_after(body)
    assert heavy == [], f"aibuild {' '.join(argv)} imported {heavy}"


def test_probe_detects_a_heavy_import() -> None:
    assert _heavy_after("import jinja2") == ["jinja2"]
