"""No function in aibuild/ is over about 80 lines unless it reads as one idea (issue 18).

Lines are counted from the AST: from the ``def`` line to the body's last line, docstring
included, decorators not. A longer function fails this test unless ``ALLOWED`` names
it, with a one-line reason; an entry that no longer applies fails too, so the list
stays short.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 80

# "path::qualified name" -> why it reads as one idea. Keep it short.
ALLOWED: dict[str, str] = {}


def function_lengths(root: Path) -> dict[str, int]:
    """``path::Class.function`` -> its line count, for every function under ROOT/aibuild."""
    out: dict[str, int] = {}
    for path in sorted((root / "aibuild").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        _walk(tree, f"{path.relative_to(root).as_posix()}::", out)
    return out


def _walk(node: ast.AST, prefix: str, out: dict[str, int]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            assert child.end_lineno is not None
            out[f"{prefix}{child.name}"] = child.end_lineno - child.lineno + 1
            _walk(child, f"{prefix}{child.name}.", out)
        elif isinstance(child, ast.ClassDef):
            _walk(child, f"{prefix}{child.name}.", out)


def test_no_function_is_over_80_lines_unless_allowed() -> None:
    lengths = function_lengths(ROOT)
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    unexplained = {name: n for name, n in long.items() if name not in ALLOWED}
    assert not unexplained, (
        f"functions over {MAX_LINES} lines (split them by idea, or add each to ALLOWED with "
        f"a one-line reason): {unexplained}"
    )
    stale = sorted(set(ALLOWED) - set(long))
    assert not stale, f"ALLOWED names functions that are no longer over {MAX_LINES} lines: {stale}"
    assert all(reason.strip() and "\n" not in reason for reason in ALLOWED.values())


def test_the_count_finds_a_long_function(tmp_path: Path) -> None:
    """The walk sees functions at every depth, methods included, and counts their lines."""
    package = tmp_path / "aibuild" / "sub"
    package.mkdir(parents=True)
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (package / "mod.py").write_text(
        f"class C:\n    def long(self) -> None:\n{body}\n\n\ndef short() -> None:\n    pass\n"
    )
    assert function_lengths(tmp_path) == {
        "aibuild/sub/mod.py::C.long": MAX_LINES + 1,
        "aibuild/sub/mod.py::short": 2,
    }
