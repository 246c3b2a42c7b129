"""The one door through which a value reaches a generated script or job file.

Every generator (Slurm's sbatch script for pyxis, Apptainer and docker, Compose,
Kubernetes, and any new one) writes user-given text only through these functions:

- ``env_name(key)``: a variable name is *validated* (``[A-Za-z_][A-Za-z0-9_]*``), never
  quoted: a name with ``;``, ``=``, a space or a newline is refused with one line.
- ``word(value)``: any other value becomes one shell word, single-quoted (``shlex``),
  so that the shell never expands or splits it; a NUL, which no argument or variable
  can hold, is refused.
- ``ShellText``: the only way to put shell *source* in a command (``"$RDZV_HOST"``,
  ``"${gpus[@]}"``): aibuild's own constants, typed, so that a user value that happens to
  read the same is still quoted.
- ``comment(text)``: text for a ``#`` comment line, on one line.
- ``kube_literal(value)``: ``$`` doubled, for Kubernetes ``env[].value``, ``command``
  and ``args``, where the kubelet expands ``$(VAR)``.
- ``compose_literal(value)``: ``$`` doubled, for Compose, which interpolates ``${VAR}``.

No heredoc: a script embedded in another is one single-quoted word.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence

from aibuild.errors import ExportError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


class ShellText(str):
    """Shell source written by aibuild itself (a variable to expand, an array), put into a
    command as it is. Never built from a user's value."""


# Variables that change how the script itself, or the scheduler's tools, run when the
# script exports them on the host (pyxis passes the job's own environment on): the shell's
# search path and startup files, the dynamic loader, srun's/sbatch's input variables.
HOST_NAMES = frozenset(
    {"PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "CDPATH", "GLOBIGNORE", "PS4"}
    | {"PROMPT_COMMAND", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}
    # bash's own: read-only, reset by the shell, or changing its mode
    | {"_", "PWD", "OLDPWD", "SHLVL", "UID", "EUID", "PPID", "RANDOM", "SRANDOM", "SECONDS"}
    | {"LINENO", "EPOCHSECONDS", "EPOCHREALTIME", "HISTCMD", "FUNCNAME", "GROUPS", "DIRSTACK"}
    | {"PIPESTATUS", "OPTIND", "OPTARG", "OPTERR", "POSIXLY_CORRECT", "TMOUT", "HOSTNAME"}
)
HOST_PREFIXES: tuple[str, ...] = (
    *("LD_", "BASH_", "SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PYXIS_", "ENROOT_"),
    *("APPTAINER", "SINGULARITY", "COMP_", "READLINE_", "HIST"),
)


def env_name(key: str, option: str = "--env", *, host: bool = False) -> str:
    """``key`` if it is a variable name every shell and runtime accepts; else ExportError.
    With ``host`` (exported by the script on the node itself), names that would change
    how the script or srun runs (``PATH``, ``BASH_ENV``, ``LD_PRELOAD``, ``SLURM_*``) are
    refused too."""
    if not ENV_NAME.fullmatch(key):
        raise ExportError(
            f"{option} {key[:80]!r}: a variable name is letters, digits and '_', not starting "
            "with a digit"
        )
    if host and (key in HOST_NAMES or key.startswith(HOST_PREFIXES)):
        raise ExportError(
            f"{option} {key}: the pyxis runtime exports the job's variables on the node, where "
            f"{key} would change how the script and srun run; set it in the image "
            "(software.env), or use --runtime docker or apptainer"
        )
    return key


def word(value: str) -> str:
    """One shell word: ``ShellText`` as written, anything else single-quoted."""
    if isinstance(value, ShellText):
        return str(value)
    if "\x00" in value:
        raise ExportError(f"{value[:80]!r}: a NUL byte cannot reach a command or a variable")
    return shlex.quote(value)


def words(values: Iterable[str]) -> str:
    return " ".join(word(v) for v in values)


def export_line(key: str, value: str, prefix: str = "") -> str:
    """``export PREFIXKEY='value'``: the name validated (without a prefix the variable is
    the host's own: ``env_name(host=True)``), the value quoted."""
    return f"export {prefix}{env_name(key, host=not prefix)}={word(value)}"


def command(segments: Sequence[Sequence[str]]) -> str:
    """Segments of one command, a line each, joined by backslash-newlines."""
    lines = [words(segment) for segment in segments if segment]
    return " \\\n    ".join(lines)


def comment(text: str) -> str:
    """``text`` for a comment line: control characters (a newline would end the comment and
    start a command) become spaces."""
    return _CONTROL.sub(" ", text)


def kube_literal(value: str) -> str:
    """``value`` as the kubelet passes it on: ``$(VAR)`` is expanded there, ``$$`` is ``$``."""
    return value.replace("$", "$$")


def compose_literal(value: str) -> str:
    """``value`` as Compose passes it on: ``${VAR}`` is interpolated there, ``$$`` is ``$``."""
    return value.replace("$", "$$")


__all__ = [
    "ENV_NAME",
    "ShellText",
    "command",
    "comment",
    "compose_literal",
    "env_name",
    "export_line",
    "kube_literal",
    "word",
    "words",
]
