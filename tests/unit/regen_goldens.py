"""Regenerate tests/unit/goldens/<profile>.Dockerfile for every built-in profile.

Run as ``python tests/unit/regen_goldens.py`` (``make goldens``). Review the diff
before committing: a golden change is a change to every image that profile builds.
"""

from __future__ import annotations

import sys
from pathlib import Path

GOLDENS = Path(__file__).resolve().parent / "goldens"


def render_all() -> dict[str, str]:
    """Built-in profile name -> its rendered Dockerfile (default render options)."""
    from aibuild.image.render import render_dockerfile
    from aibuild.profile.load import builtin_profiles
    from aibuild.profile.resolve import plan_for

    return {name: render_dockerfile(plan_for(name)) for name in builtin_profiles()}


def main() -> int:
    GOLDENS.mkdir(parents=True, exist_ok=True)
    rendered = render_all()
    for stale in GOLDENS.glob("*.Dockerfile"):
        if stale.stem not in rendered:
            stale.unlink()
            print(f"removed {stale}")
    for name, text in rendered.items():
        path = GOLDENS / f"{name}.Dockerfile"
        old = path.read_bytes() if path.exists() else None
        path.write_bytes(text.encode("utf-8"))
        if old != text.encode("utf-8"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
