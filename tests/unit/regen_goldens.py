"""Regenerate tests/unit/goldens/<profile>.Dockerfile for every built-in profile, the
generated profile reference in docs/profiles.md (from aibuild.profile.schema) and the
rule table in docs/compatibility.md (from aibuild.profile.rules.RULES).

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
RULES_DOC = PROFILE_DOC.with_name("compatibility.md")
RULES_BEGIN = "<!-- BEGIN generated: the compatibility rules (make goldens writes it) -->"


def render_all() -> dict[str, str]:
    """Built-in profile name -> its rendered Dockerfile (default render options)."""
    from aibuild.image.render import render_dockerfile
    from aibuild.profile.load import builtin_profiles
    from aibuild.profile.resolve import plan_for

    return {name: render_dockerfile(plan_for(name)) for name in builtin_profiles()}


def with_generated(text: str, begin: str, generated: str, where: Path) -> str:
    """``text`` with ``generated`` between the ``begin`` marker and the next end marker."""
    head, found, rest = text.partition(begin)
    _, found_end, tail = rest.partition(REF_END)
    if not (found and found_end):
        raise SystemExit(f"{where}: the markers {begin!r} ... {REF_END!r} are missing")
    return f"{head}{begin}\n{generated}\n{REF_END}{tail}"


def with_profile_reference(text: str) -> str:
    """``text`` (docs/profiles.md) with the schema's reference between its markers."""
    from aibuild.profile.schema import reference_markdown

    return with_generated(text, REF_BEGIN, reference_markdown(), PROFILE_DOC)


def with_rules_table(text: str) -> str:
    """``text`` (docs/compatibility.md) with the RULES table between its markers."""
    from aibuild.profile.rules import rules_markdown

    return with_generated(text, RULES_BEGIN, rules_markdown(), RULES_DOC)


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
    for doc, update in ((PROFILE_DOC, with_profile_reference), (RULES_DOC, with_rules_table)):
        old_doc = doc.read_text(encoding="utf-8")
        new_doc = update(old_doc)
        if new_doc != old_doc:
            doc.write_text(new_doc, encoding="utf-8")
            print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
