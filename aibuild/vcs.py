"""What git says about a file or directory: its commit and remote, as OCI source labels.

Used by ``aibuild lock`` (the profile file's commit time, ``--reproducible``'s labels) and
by builds of a profile's ``project:`` (the project checkout's commit and remote).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from aibuild import labels


def git(args: Sequence[str], cwd: Path) -> str | None:
    """``git ARGS`` run in ``cwd``: its stripped output, or None when it fails or says nothing."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


def without_credentials(url: str) -> str:
    """A remote URL with any ``user:password@`` removed (never put secrets in labels): the
    user information runs to the *last* ``@`` of the authority, since a password may hold
    ``@`` (``https://user:p@ss@host/x`` -> ``https://host/x``)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)$", url, re.S)
    if not match:
        return url
    scheme, authority, rest = match.groups()
    return scheme + authority.rpartition("@")[2] + rest


def git_source(path: Path | None) -> dict[str, str]:
    """The git commit and remote URL of the repository holding ``path``, a file or a
    directory (empty when it is in none)."""
    if path is None:
        return {}
    full = path.resolve()
    where = full if full.is_dir() else full.parent
    commit = git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {}
    info = {"commit": commit}
    remote = git(["remote", "get-url", "origin"], where)
    if remote:
        info["remote"] = without_credentials(remote)
    return info


def source_labels(path: Path | None) -> dict[str, str]:
    """OCI source labels (``.revision``, ``.source``) for a path in a git repository."""
    info = git_source(path)
    found = {}
    if "commit" in info:
        found[labels.OCI_REVISION] = info["commit"]
    if "remote" in info:
        found[labels.OCI_SOURCE] = info["remote"]
    return found
