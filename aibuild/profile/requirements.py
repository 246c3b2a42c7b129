"""The image's Python requirements besides torch: one list for the rendered
requirements.txt, the wheelhouse, the lock and the SBOM, so they always agree.

- ``RUNTIME_REQUIREMENTS``: what the aibuild runtime (the image's ``aibuild train``)
  needs; ``runtime_conflict`` says when a requirement of the profile's pins one of them
  to a version the runtime cannot use.
- ``image_requirements``: the profile's ``software.pip`` and its project's requirements,
  then the runtime's for the packages those do not name.
- ``dev_requirements``: what the ``<tag>-dev`` image adds (``dev.jupyter``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan

# Packages the aibuild runtime (the embedded trainer's CLI) needs inside the image, besides torch.
RUNTIME_REQUIREMENTS = ("click>=8.1", "packaging>=23", "pyyaml>=6.0")
# What `dev.jupyter: true` adds in the `<tag>-dev` image (never in the training image).
DEV_JUPYTER_REQUIREMENTS = ("jupyterlab>=4.2,<5",)


def requirement_name(requirement: str) -> str:
    """The canonical project name of a PEP 508 requirement."""
    return canonicalize_name(Requirement(requirement).name)


def runtime_conflict(req: Requirement) -> str | None:
    """Why a requirement pins a package the aibuild runtime needs to a version the runtime
    cannot use (None when it does not)."""
    runtime = {requirement_name(r): Requirement(r) for r in RUNTIME_REQUIREMENTS}
    needed = runtime.get(canonicalize_name(req.name))
    if needed is None:
        return None
    pinned = [s.version for s in req.specifier if s.operator in ("==", "===")]
    if any(not needed.specifier.contains(v, prereleases=True) for v in pinned):
        return (
            f"'{req}' conflicts with the aibuild runtime's '{needed}' "
            f"(the image's `aibuild train` needs it): pin a version that satisfies both"
        )
    return None


def image_requirements(plan: BuildPlan) -> list[str]:
    """Every requirement the image's pip installs besides torch: the profile's software.pip
    and its project's requirements, then the aibuild runtime's for the packages those do
    not name (a requirement for a runtime package replaces the runtime's: validation
    checked that it admits a version the runtime can use)."""
    own = [*plan.pip, *(plan.project.requirements if plan.project else ())]
    named = {requirement_name(r) for r in own}
    runtime = [r for r in RUNTIME_REQUIREMENTS if requirement_name(r) not in named]
    return sorted(dict.fromkeys([*own, *runtime]), key=str.lower)


def dev_requirements(plan: BuildPlan) -> list[str]:
    """What the ``<tag>-dev`` image installs on top of the image's requirements."""
    return list(DEV_JUPYTER_REQUIREMENTS) if plan.dev_jupyter else []


def direct_reference(req: Requirement, allowed: bool) -> str | None:
    """Why ``name @ URL`` (a file, git+, an archive) is refused: pip builds what it fetches
    that way on the host, running its setup.py, whatever --only-binary says."""
    if req.url is None or allowed:
        return None
    scheme = req.url.split(":", 1)[0] if ":" in req.url else "a path"
    return (
        f"'{req.name} @ ...' is a direct reference ({scheme}): aibuild installs wheels from "
        "an index only; set software.allow_direct_references: true to accept it"
    )
