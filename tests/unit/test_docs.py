"""The documentation is executed: every ```console example in README.md and docs/ runs.

The rules (docs/README.md says them to writers):

- A ```console block is a terminal session: a line starting with ``$ `` is a command
  (a line ending in ``\\`` continues it), the lines after it, up to the next ``$ ``, are
  its output (stdout and stderr together). Each command runs with bash, in the order
  written, in a fresh temporary directory holding a copy of ``examples/``; ``aibuild``
  is this checkout's. No Docker engine, no GPU, no network: DOCKER_HOST points nowhere,
  so an example that needs an engine fails here; write those as ```sh (not run).
- Output is compared line by line, trailing blanks ignored. A line that is only
  ``...`` stands for any number of lines (none included); ``...`` inside a line stands
  for any text within that line. An output that holds a traceback never matches.
- ```sh, ```yaml and every other block are not run.

The generated profile reference in docs/profiles.md is compared to what the schema
generates, and the rule table in docs/compatibility.md to ``rules.RULES`` (``make
goldens`` rewrites both).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 220  # "about 200": the newcomer's page; the rest goes to docs/
# Files other branches add (issues 15, 16, 17, 19): linked already, written there.
PENDING: set[str] = set()  # pages linked before they were written (none now)


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@dataclass(frozen=True)
class Step:
    command: str
    expected: list[str]
    line: int  # where the command starts in its file


@dataclass(frozen=True)
class Session:
    path: Path
    line: int  # the opening fence
    steps: list[Step]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def console_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line of the opening fence, the block's lines) for every ```console block."""
    blocks: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, marks, lang = fence.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(marks):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        if lang == "console":
            blocks.append((start + 1, body))
    return blocks


def parse_session(first_line: int, body: list[str]) -> list[Step]:
    """Split a console block into commands and their expected output."""
    steps: list[Step] = []
    i = 0
    while i < len(body):
        if not body[i].startswith("$ "):
            if body[i].strip():
                raise ValueError(f"line {first_line + 1 + i}: output before any `$ ` command")
            i += 1
            continue
        line = first_line + 1 + i
        parts = [body[i][2:]]
        while parts[-1].endswith("\\") and i + 1 < len(body):
            i += 1
            parts.append(body[i])
        command = "\n".join(parts)
        i += 1
        expected: list[str] = []
        while i < len(body) and not body[i].startswith("$ "):
            expected.append(body[i])
            i += 1
        while expected and not expected[-1].strip():
            expected.pop()
        steps.append(Step(command, expected, line))
    return steps


def output_pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        line = line.rstrip()
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def output_matches(expected: list[str], actual: str) -> bool:
    if "Traceback (most recent call last)" in actual:
        return False
    text = "".join(line.rstrip() + "\n" for line in actual.splitlines())
    return output_pattern(expected).fullmatch(text) is not None


def sessions() -> list[Session]:
    found = []
    for path in doc_files():
        for line, body in console_blocks(path.read_text(encoding="utf-8")):
            found.append(Session(path, line, parse_session(line, body)))
    return found


SESSIONS = sessions()


def session_env(tmp: Path) -> dict[str, str]:
    """This checkout's aibuild first on PATH; nothing from the caller's aibuild settings."""
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "aibuild"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m aibuild "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIBUILD_", "DOCKER_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        DOCKER_HOST="unix:///nonexistent/aibuild-docs-test.sock",
        HOME=str(tmp),
        COLUMNS="80",
        TERM="dumb",
        NO_COLOR="1",
        LC_ALL="C.UTF-8",
        TZ="UTC",
        PYTHONUNBUFFERED="1",  # stdout and stderr in the order written, as on a terminal
    )
    return env


def test_every_doc_file_is_found() -> None:
    assert README in doc_files() and DOCS / "README.md" in doc_files()
    assert len(SESSIONS) >= 5, "the docs lost their console examples"


@pytest.mark.parametrize("session", SESSIONS, ids=[s.id for s in SESSIONS])
def test_console_example(session: Session, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = session_env(tmp_path)
    assert session.steps, f"{session.id}: a console block without a `$ ` command"
    for step in session.steps:
        done = subprocess.run(
            ["bash", "-c", step.command],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        where = f"{session.path.relative_to(ROOT)}:{step.line}"
        assert output_matches(step.expected, done.stdout), (
            f"{where}: `$ {step.command}` printed (exit {done.returncode}):\n{done.stdout}\n"
            "the page shows:\n" + "\n".join(step.expected)
        )


# ------------------------------------------------------------------ the checker itself


def test_parse_session_commands_continuations_and_output() -> None:
    body = ["$ echo a \\", "  b", "a b", "", "$ true", "$ printf 'x\\ny\\n'", "x", "..."]
    steps = parse_session(10, body)
    assert [s.command for s in steps] == ["echo a \\\n  b", "true", "printf 'x\\ny\\n'"]
    assert [s.expected for s in steps] == [["a b"], [], ["x", "..."]]
    assert [s.line for s in steps] == [11, 15, 16]
    with pytest.raises(ValueError, match="output before any"):
        parse_session(1, ["stray"])


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (["a", "b"], "a\nb\n", True),
        (["a", "b"], "a\nb\nc\n", False),  # an extra line is a difference
        (["a"], "a   \n", True),  # trailing blanks do not count
        (["a", "...", "z"], "a\nz\n", True),
        (["a", "...", "z"], "a\nb\nc\nz\n", True),
        (["a", "...", "z"], "a\nb\n", False),
        (["built ... in ...s"], "built 1234 in 5.0s\n", True),
        (["built ... in ...s"], "built 1234\nin 5.0s\n", False),  # in-line `...` stays in its line
        (["x.y"], "xzy\n", False),  # everything else is literal
        ([], "", True),
        ([], "surprise\n", False),
        (["..."], "Traceback (most recent call last):\n  boom\n", False),
    ],
)
def test_output_matching(expected: list[str], actual: str, ok: bool) -> None:
    assert output_matches(expected, actual) is ok


def test_only_console_blocks_run() -> None:
    text = "```sh\n$ rm -rf /\n```\n```console\n$ echo hi\nhi\n```\n````console\n$ true\n````\n"
    assert console_blocks(text) == [(4, ["$ echo hi", "hi"]), (8, ["$ true"])]


# ------------------------------------------------------------------ the pages


def load_regen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "regen_goldens", Path(__file__).with_name("regen_goldens.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_reference_is_what_the_schema_generates() -> None:
    regen = load_regen()
    current = (DOCS / "profiles.md").read_text(encoding="utf-8")
    expected = regen.with_profile_reference(current)
    assert current == expected, (
        "docs/profiles.md's profile reference differs from the schema's: run `make goldens`"
    )


def test_rule_table_is_what_rules_generates() -> None:
    regen = load_regen()
    current = (DOCS / "compatibility.md").read_text(encoding="utf-8")
    assert current == regen.with_rules_table(current), (
        "docs/compatibility.md's rule table differs from aibuild.profile.rules.RULES: "
        "run `make goldens`"
    )


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_relative_links_resolve() -> None:
    broken = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            resolved = (path.parent / target).resolve()
            if not resolved.exists() and resolved.name not in PENDING:
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    missing = sorted(p for p in pages | PENDING if f"({p})" not in index)
    assert not missing, f"docs/README.md does not link {missing}"
