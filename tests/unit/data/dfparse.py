"""Helpers shared by the unit tests (loaded by path: the tests have no packages)."""

from __future__ import annotations


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, honouring backslash continuations;
    comments and blank lines dropped (also inside a continuation, as Docker does)."""
    out: list[tuple[str, str]] = []
    pending: list[str] = []
    for raw in dockerfile.split("\n"):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        text = " ".join(part.strip() for part in pending)
        pending = []
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest))
    if pending:
        text = " ".join(part.strip() for part in pending)
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest))
    return out


def keywords(dockerfile: str) -> list[str]:
    return [word for word, _ in instructions(dockerfile)]
