"""Regenerate tests/unit/goldens/<profile>.Dockerfile for every built-in profile, and
the generated profile reference in docs/profiles.md (from aibuild.profile.schema).

Run as ``python tests/unit/regen_goldens.py`` (``make goldens``). Review the diff
before committing: a golden change is a change to every image that profile builds.
"""

from __future__ import annotations

import sys
from pathlib import Path

GOLDENS = Path(__file__).resolve().parent / "goldens"
PROFILE_DOC = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"
REF_BEGIN = "<!-- BEGIN generated: the profile reference (make goldens writes it) -->"
REF_END = "<!-- END generated -->"


def render_all() -> dict[str, str]:
    """Built-in profile name -> its rendered Dockerfile (default render options)."""
    from aibuild.image.render import render_dockerfile
    from aibuild.profile.load import builtin_profiles
    from aibuild.profile.resolve import plan_for

    return {name: render_dockerfile(plan_for(name)) for name in builtin_profiles()}


def with_profile_reference(text: str) -> str:
    """``text`` (docs/profiles.md) with the schema's reference between its markers."""
    from aibuild.profile.schema import reference_markdown

    head, found, rest = text.partition(REF_BEGIN)
    _, found_end, tail = rest.partition(REF_END)
    if not (found and found_end):
        raise SystemExit(f"{PROFILE_DOC}: the markers {REF_BEGIN!r} ... {REF_END!r} are missing")
    return f"{head}{REF_BEGIN}\n{reference_markdown()}\n{REF_END}{tail}"


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
    old_doc = PROFILE_DOC.read_text(encoding="utf-8")
    new_doc = with_profile_reference(old_doc)
    if new_doc != old_doc:
        PROFILE_DOC.write_text(new_doc, encoding="utf-8")
        print(f"wrote {PROFILE_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
