"""The exception hierarchy: every message is written for the user who will read it.

The CLI turns any ``AibuildError`` into its message on stderr and exit code 1.
Anything else escaping to the CLI is a bug (a traceback).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SHOWN_CHARS = 80
"""The most characters of a value (a key, a config value, an exception's text) that an
error message echoes: a hostile value cannot grow a message past this."""


def one_line(text: str) -> str:
    """Control characters (a newline above all) shown as escapes, so that a hostile key
    or value echoed in a message can never fake another diagnostic line."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def shown(value: object, *, quote: bool = True, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as an error message shows it, the one rule for every message: repr'd
    (``quote``, so a string comes in quotes) or str'd, on one line (control characters
    escaped), at most ``limit`` characters (a long one cut in the middle, marked ``...``);
    a large collection is described, never repr'd."""
    if isinstance(value, (list, dict, tuple, set)) and len(value) > limit:
        text = f"<a {type(value).__name__} of {len(value):,} items>"
    else:
        text = one_line(repr(value) if quote else str(value))
    if len(text) > limit:
        half = (limit - 3) // 2
        text = f"{text[:half]}...{text[-half:]}"
    return text


def did_you_mean(word: object, options: Sequence[str], *, listing: str | None = None) -> str:
    """The hint that ends a message about an unknown ``word``: ``; did you mean 'x'?`` when
    one of ``options`` is close to it; otherwise ``; LISTING: a, b, c`` when ``listing``
    names the options (``"known keys"``), else nothing."""
    import difflib

    close = difflib.get_close_matches(str(word)[:MAX_SHOWN_CHARS], list(options), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if listing and options:
        return f"; {listing}: {', '.join(options)}"
    return ""


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning about a profile, located in its source file."""

    severity: str  # "error" | "warning"
    message: str
    key: str = ""  # dotted key path, e.g. "software.cuda"
    file: str = "<profile>"
    line: int = 0
    col: int = 0

    def format(self) -> str:
        """``FILE:LINE:COL: error: MESSAGE (key.path)``; without a location when there is none."""
        where = f"{one_line(self.file)}:{self.line}:{self.col}: " if self.line else ""
        suffix = f" ({one_line(self.key)})" if self.key else ""
        return f"{where}{self.severity}: {one_line(self.message)}{suffix}"

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "message": self.message,
            "key": self.key,
            "file": self.file,
            "line": self.line,
            "col": self.col,
        }


class AibuildError(Exception):
    """Base of every error aibuild reports to users (exit code 1)."""

    exit_code = 1

    def format(self) -> str:
        return str(self)


class ProfileError(AibuildError):
    """The profile cannot be loaded or is invalid; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str) -> None:
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic("error", diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.format())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


class RenderError(AibuildError):
    """A build context could not be rendered (template problem, bad override dir)."""


class EngineError(AibuildError):
    """The Docker engine cannot be reached or answered with an error."""


class BuildError(AibuildError):
    """An image build failed; names the failing step and shows its log tail."""

    def __init__(self, message: str, step: str = "", log_tail: list[str] | None = None) -> None:
        self.step = step
        self.log_tail = list(log_tail or [])
        super().__init__(message)

    def format(self) -> str:
        parts = [str(self)]
        if self.step:
            parts.append(f"  failing step: {self.step}")
        if self.log_tail:
            parts.append("  last lines of its output:")
            parts.extend(f"    {line}" for line in self.log_tail)
        return "\n".join(parts)


class RunError(AibuildError):
    """A container could not be started or run."""


class PublishError(AibuildError):
    """An image could not be pushed, locked or made reproducible."""


class TrainError(AibuildError):
    """The trainer cannot start: bad config, missing dataset, no usable device."""


class ExportError(AibuildError):
    """A cluster job could not be written or submitted (bad size, too many GPUs, no sbatch)."""
