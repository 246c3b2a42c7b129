"""The progress callback that long operations take: one line of text at a time."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def silent(_: str) -> None:
    """A ``Log`` that shows nothing."""
    return None


__all__ = ["Log", "silent"]
