"""``KEY=VALUE`` items, as every option that takes them spells them.

One parser for ``--set``, ``--build-arg``, ``--env``, ``--label`` and the trainer's
``--set``: each caller says what a key may look like and whether a bare ``KEY``
is allowed, and turns the ``ValueError`` into its own kind of error. Standard
library only: the trainer imports it inside images that hold just torch, click
and pyyaml.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aibuild.errors import shown

VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an environment or build-arg name
DOTTED = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")  # a profile key path
LABEL = re.compile(r"[^\s=]+")  # a label name: anything without whitespace or '='


def split_item(
    item: str,
    *,
    option: str,
    key: re.Pattern[str] | None = None,
    example: str = "KEY=VALUE",
    bare: bool = False,
) -> tuple[str, str | None]:
    """``'K=V'`` -> ``('K', 'V')``; a bare ``'K'`` -> ``('K', None)`` when ``bare``.

    The key is stripped of surrounding spaces, the value kept as given. ValueError,
    naming ``option`` and the item, when there is no ``=`` (and ``bare`` is off), the
    key is empty, or it does not match ``key``.
    """
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep and not bare:
        raise ValueError(f"{option} {shown(item)}: expected {example}")
    if not name or (key is not None and not key.fullmatch(name)):
        raise ValueError(f"{option} {shown(item)}: expected {example} with a valid key")
    return name, (value if sep else None)


def split_items(
    items: Iterable[str],
    *,
    option: str,
    key: re.Pattern[str] | None = None,
    example: str = "KEY=VALUE",
) -> dict[str, str]:
    """Several ``K=V`` items -> a dict (a later key wins), with ``split_item``'s checks."""
    out: dict[str, str] = {}
    for item in items:
        name, value = split_item(item, option=option, key=key, example=example)
        assert value is not None
        out[name] = value
    return out


__all__ = ["DOTTED", "LABEL", "VARIABLE", "split_item", "split_items"]
