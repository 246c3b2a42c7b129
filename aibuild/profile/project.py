"""A profile's ``project:``: the user's own code, its requirements, command and workdir.

``project.path`` is relative to the profile file that sets it (``--set project.path=...``:
to the current directory). ``project.requirements`` names a requirements.txt (plain PEP 508
lines; comments and line continuations as pip reads them, pip options refused) or a
pyproject.toml, whose ``[project].dependencies`` are read. Everything is parsed with
``packaging``: the requirements join the image's one requirements list
(``resolve.image_requirements``), so the rendered requirements layer, ``aibuild wheelhouse``,
the lock and the SBOM all see them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from aibuild.profile.schema import CONTROL_RE, split_command

# Never copied into the image: version control, host environments, aibuild's own records
# and outputs, editor and notebook droppings. The project's .dockerignore and
# project.exclude come after these, so `!PATTERN` there takes a path back.
_NEVER_COPIED = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    ".aibuild",
    "aibuild-output",
    ".devcontainer",
    "__pycache__",
    "*.pyc",
    ".ipynb_checkpoints",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
)
# at the top and at every depth: vendor/lib/.git/config is as secret as .git/config
DEFAULT_EXCLUDE = tuple(p for name in _NEVER_COPIED for p in (name, f"**/{name}"))
_COMMENT = re.compile(r"(^|\s)#.*$")
_OPTION = re.compile(r"(?:^|\s)(--?[A-Za-z][\w-]*)")


class RequirementsError(ValueError):
    """A requirements file that cannot be used; the message names the file and line."""


def project_dir(path_value: Any, written_in: str) -> Path:
    """The project folder: ``path_value`` relative to the folder of ``written_in`` (the
    profile file that set it, as the loader shows it: relative to the current directory,
    or absolute), or to the current directory when it came from ``--set``."""
    base = Path.cwd() if written_in in ("--set", "<profile>") else Path(written_in).parent
    return (base / str(path_value if path_value is not None else ".")).resolve()


def outside_profile_folder(path: Path, written_in: str, key: str) -> str | None:
    """Why ``path`` (resolved: links followed) may not be read for ``key``: a profile may
    only name files in its own folder, so that a profile someone hands you cannot read
    /etc/shadow or ../secrets into an image. Paths given on the command line (``--set``)
    are the caller's own choice and may go anywhere."""
    if written_in in ("--set", "<profile>"):
        return None
    folder = Path(written_in).parent.resolve()
    if path.resolve().is_relative_to(folder):
        return None
    return (
        f"{key} leads to {path.resolve()}, outside the profile's folder {folder}: a profile may "
        f"only name files beside it (give it with --set {key}=... to use it anyway)"
    )


def _read_text(path: Path) -> str:
    from aibuild.bounds import BOUNDS, read_bounded
    from aibuild.errors import RenderError

    if path.is_dir():
        raise RequirementsError(f"{path} is a directory, not a requirements file")
    try:  # bounded by the bytes read: /dev/zero, a FIFO or /proc cannot hang or fill memory
        data = read_bounded(
            path, BOUNDS["project_file_bytes"].high, "requirements file", RenderError
        )
    except RenderError as exc:
        raise RequirementsError(str(exc)) from None
    try:
        return data.decode("utf-8-sig")  # a BOM, as editors on Windows write
    except UnicodeDecodeError as exc:
        raise RequirementsError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _requirement(text: str, where: str) -> str:
    # The line itself is never quoted: the file is not the profile's own, and may be one a
    # profile points at to have it echoed (a key, /etc/shadow); its file and line say where.
    if CONTROL_RE.search(text):
        raise RequirementsError(f"{where}: a control character in the line")
    if _OPTION.search(text):
        raise RequirementsError(
            f"{where}: pip options are not supported: list plain PEP 508 requirements "
            "(name, version specifier, markers)"
        )
    try:
        return str(Requirement(text))
    except InvalidRequirement:
        raise RequirementsError(
            f"{where}: not a PEP 508 requirement (name, version specifier, markers)"
        ) from None


def parse_requirements_txt(text: str, shown: str) -> list[str]:
    """The requirements of a requirements.txt, normalised; RequirementsError names the line."""
    found: list[str] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        logical = (pending + line).strip()
        pending = ""
        if logical:
            found.append(_requirement(logical, f"{shown}:{start}"))
    if pending.strip():
        found.append(_requirement(pending.strip(), f"{shown}:{start}"))
    return found


def parse_pyproject(text: str, shown: str) -> list[str]:
    """``[project].dependencies`` of a pyproject.toml, normalised."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RequirementsError(f"{shown}: invalid TOML: {exc}") from None
    except RecursionError:  # tables or arrays nested thousands deep
        raise RequirementsError(f"{shown}: invalid TOML: nested too deep") from None
    project = data.get("project")
    if not isinstance(project, dict):
        raise RequirementsError(f"{shown}: no [project] table (PEP 621) to read dependencies from")
    dynamic = project.get("dynamic") or []
    if isinstance(dynamic, list) and "dependencies" in dynamic:
        raise RequirementsError(
            f"{shown}: [project].dependencies are dynamic (computed by the build backend): "
            "list them in a requirements.txt and name that instead"
        )
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise RequirementsError(f"{shown}: [project].dependencies must be a list of strings")
    return [
        _requirement(dep.strip(), f"{shown}: [project].dependencies[{i}]")
        for i, dep in enumerate(deps)
    ]


def read_requirements(path: Path, shown: str | None = None) -> list[str]:
    """The requirements ``path`` lists (a pyproject.toml's ``[project].dependencies``, else
    the lines of a requirements file), normalised PEP 508; RequirementsError otherwise."""
    shown = shown or str(path)
    text = _read_text(path)
    if path.suffix == ".toml":
        return parse_pyproject(text, shown)
    return parse_requirements_txt(text, shown)


def command_argv(value: Any) -> tuple[str, ...]:
    """``project.command`` as argv (validated by the schema already); () when unset."""
    return () if value is None else tuple(split_command(value))
