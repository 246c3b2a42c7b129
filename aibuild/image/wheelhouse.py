"""Wheelhouse: every wheel a profile's image installs, downloaded for the image's platform.

``aibuild wheelhouse PROFILE -o DIR`` runs ``pip download`` for the image's target
(``manylinux_2_28_x86_64``, the plan's CPython X.Y), with the plan's torch wheel index
first and PyPI as an extra index. The directory can then be given to
``aibuild image --wheelhouse DIR`` on a machine without network access.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aibuild.errors import BuildError
from aibuild.profile.resolve import image_requirements

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan

PLATFORM = "manylinux_2_28_x86_64"
PYPI = "https://pypi.org/simple"


def requirements(plan: BuildPlan) -> list[str]:
    """Everything the image installs with pip: torch, then ``image_requirements`` (the
    profile's packages and the aibuild runtime's, exactly as rendered)."""
    return [f"torch=={plan.torch}", *image_requirements(plan)]


def _name(requirement: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        return requirement


def pip_download_command(
    plan: BuildPlan,
    dest: Path,
    *,
    python: str = sys.executable,
    platform: str = PLATFORM,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
) -> list[str]:
    """The ``pip download`` command line for ``plan``'s image (pure)."""
    abi = "cp" + plan.python.replace(".", "")
    command = [
        python,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--platform",
        platform,
        "--python-version",
        plan.python,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "-d",
        str(dest),
        "--index-url",
        plan.torch_index_url,
        "--extra-index-url",
        PYPI,
    ]
    for url in extra_index_urls:
        command += ["--extra-index-url", url]
    for link in find_links:
        command += ["--find-links", link]
    return command + requirements(plan)


@dataclass(frozen=True)
class WheelhouseResult:
    directory: Path
    wheels: list[str]
    command: list[str]


def download_wheelhouse(
    plan: BuildPlan,
    dest: Path,
    *,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
    echo: bool = True,
) -> WheelhouseResult:
    """Download ``plan``'s wheels into ``dest``; BuildError with pip's last lines on failure."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = pip_download_command(
        plan, dest, extra_index_urls=extra_index_urls, find_links=find_links
    )
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            if echo:
                print(line, end="", file=sys.stderr, flush=True)
        code = proc.wait()
    if code != 0:
        text = "\n".join(tail)
        hint = ""
        if "Could not find a version" in text or "No matching distribution" in text:
            hint = (
                f" (no wheel for CPython {plan.python} on {PLATFORM} in {plan.torch_index_url} "
                f"or {PYPI}: is the index reachable from here? Add --find-links DIR holding "
                "the wheels, or --extra-index-url a mirror)"
            )
        elif any(m in text for m in ("NewConnectionError", "ConnectTimeout", "ProxyError")):
            hint = (
                f" (an index could not be reached: {plan.torch_index_url} / {PYPI}; set "
                "HTTPS_PROXY, or use --find-links / --extra-index-url to a reachable mirror)"
            )
        raise BuildError(
            f"pip download failed with exit code {code}{hint}",
            step=" ".join(command[1:5]) + " ... " + " ".join(requirements(plan)),
            log_tail=list(tail),
        )
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    return WheelhouseResult(dest, wheels, command)
