"""Where the shipped templates/ and profiles/ are.

In a wheel they live inside the package (aibuild/templates, aibuild/profiles);
in a source checkout or editable install they are at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"aibuild installation is incomplete: no {name}/ directory near {_PKG}")


def templates_dir() -> Path:
    return _find("templates")


def profiles_dir() -> Path:
    return _find("profiles")


def package_dir() -> Path:
    return _PKG
