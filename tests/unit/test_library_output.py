"""The library never prints (pypa/build's injected logger): what it shows goes through the
``Log`` (``aibuild.logs``), the run ``Console`` or the build reporter that the CLI passes
in. Every module under aibuild/ is read with ``ast``: a call to ``print``, ``click.echo``
or ``click.secho``, or a use of ``sys.stdout``/``sys.stderr``, is allowed only in the
places below, each with its reason, and in a module's ``if __name__ == "__main__":``
block (a script's own output).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aibuild

PACKAGE = Path(aibuild.__file__).resolve().parent

# Paths relative to aibuild/ (a folder ends with "/"), and why each may write.
ALLOWED = {
    "cli/": "the command line: parsing and printing is its job",
    "image/progress.py": "the build reporters the CLI picks (reporter_for(sys.stderr)): "
    "drawing the build's progress on the stream they are given is their job",
    "train/cli.py": "the trainer's own command line, run inside the image",
    "train/metrics.py": "the trainer's reporter: rank 0's console lines and warnings are the "
    "training run's output (as nanoGPT's and torchtitan's), in a program of its own, not a "
    "library the CLI calls",
}
STREAMS = {"stdout", "stderr", "__stdout__", "__stderr__"}
ECHOES = {"echo", "secho"}


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    names = [test.left, *test.comparators]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in names
    )


def _writes(node: ast.AST) -> str | None:
    """What ``node`` writes to the process's own output with, or None."""
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "print":
            return "print()"
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ECHOES
            and isinstance(func.value, ast.Name)
            and func.value.id == "click"
        ):
            return f"click.{func.attr}()"
    if (
        isinstance(node, ast.Attribute)
        and node.attr in STREAMS
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ):
        return f"sys.{node.attr}"
    if isinstance(node, ast.ImportFrom) and node.module in ("sys", "click"):
        taken = {a.name for a in node.names} & (STREAMS | ECHOES)
        if taken:
            return f"from {node.module} import {', '.join(sorted(taken))}"
    return None


def direct_writes(source: str) -> list[str]:
    """``LINE: what`` for each direct write to stdout/stderr in ``source``, outside a
    ``__main__`` block."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        what = _writes(node)
        if what is not None:
            found.append(f"{getattr(node, 'lineno', '?')}: {what}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _allowed(relative: str) -> bool:
    return any(relative == p or (p.endswith("/") and relative.startswith(p)) for p in ALLOWED)


LIBRARY = sorted(
    p.relative_to(PACKAGE).as_posix()
    for p in PACKAGE.rglob("*.py")
    if not _allowed(p.relative_to(PACKAGE).as_posix())
)


@pytest.mark.parametrize("relative", LIBRARY)
def test_the_library_never_prints(relative: str) -> None:
    writes = direct_writes((PACKAGE / relative).read_text(encoding="utf-8"))
    assert not writes, (
        f"aibuild/{relative} writes to stdout/stderr itself ({'; '.join(writes)}): take a "
        "Log (aibuild.logs), a run Console or a reporter from the caller instead"
    )


def test_every_allowed_place_exists() -> None:
    """An allowance for a module that is gone (or moved) is removed, not kept."""
    missing = [p for p in ALLOWED if not (PACKAGE / p).exists()]
    assert not missing, missing


@pytest.mark.parametrize(
    "source",
    [
        "print('x')",
        "import sys\nsys.stderr.write('x')\n",
        "import sys\ndef f(out=None):\n    return out or sys.stdout.buffer\n",
        "import click\nclick.echo('x', err=True)\n",
        "from sys import stderr\n",
        "class A:\n    def f(self):\n        print('deep', flush=True)\n",
    ],
)
def test_the_checker_finds_direct_writes(source: str) -> None:
    assert direct_writes(source)


@pytest.mark.parametrize(
    "source",
    [
        "if __name__ == '__main__':\n    print('a script')\n",
        "def f(say):\n    say('through the caller')\n",
        "import sys\nfd = sys.stdin.fileno()\n",  # reading is not writing
        "s = \"print('inside a string, run elsewhere')\"\n",
    ],
)
def test_the_checker_leaves_the_rest(source: str) -> None:
    assert direct_writes(source) == []
