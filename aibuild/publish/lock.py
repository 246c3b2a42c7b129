"""Lock files: a profile's base image, exact packages and build time, pinned.

``aibuild lock PROFILE`` writes ``<profile>.lock.json`` beside the profile (in the
current directory for a built-in profile). Its versions come from a built image
of the profile, read inside it by the build stage's ``inspect_image``: ``pip
freeze --all`` run by the image's ``/opt/venv/bin/python`` and ``dpkg-query -W``.
The image is, in order: ``--image`` when given; the newest recorded build of the
same profile hash still on the engine; else a fresh build.

A lock holds (no timestamp of its own, so it is stable under re-locking):

- ``profile``: name, file and the plan's ``profile_hash``: a build ``--locked`` fails
  when the profile has changed since;
- ``base_image`` / ``runtime_image``: reference and image ID (and repo digest when known);
- ``python``: every distribution with its exact version, and the sha256 of its
  wheel when a wheelhouse was given;
- ``os``: every Debian package with its exact version (checked, not pinned: a
  Debian mirror serves only current versions);
- ``source_date_epoch``: the build time of reproducible builds: ``--source-date-epoch``,
  else ``$SOURCE_DATE_EPOCH``, else the git commit time of the profile file, else
  the start of the current UTC day.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild.errors import PublishError, shown
from aibuild.oci.media import EPOCH_MAX
from aibuild.publish.sbom import split_pins
from aibuild.vcs import git
from aibuild.vcs import git_source as git_source
from aibuild.vcs import source_labels as source_labels

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan, RenderOptions

LOCK_VERSION = 1
LOCK_SUFFIX = ".lock.json"
# Not pinned through pip constraints: the venv's own installer.
UNCONSTRAINED = frozenset({"pip"})


def profile_file(ref: str) -> Path | None:
    """The profile's file when the user named a file (None for a built-in name)."""
    path = Path(ref)
    return path if path.is_file() else None


def default_lock_path(ref: str) -> Path:
    """``<profile>.lock.json`` beside a profile file; ``<name>.lock.json`` in the cwd
    for a built-in profile."""
    path = profile_file(ref)
    if path is not None:
        return path.with_name(path.name.removesuffix(".yaml").removesuffix(".yml") + LOCK_SUFFIX)
    return Path(ref.removesuffix(".yaml") + LOCK_SUFFIX)


ENV_EPOCH = "SOURCE_DATE_EPOCH"


def check_epoch(value: int, shown: str) -> int:
    """``value`` when it is a usable SOURCE_DATE_EPOCH (0 to the end of year 9999), else a
    PublishError that starts with ``shown`` (where it came from, and the value)."""
    if not 0 <= value <= EPOCH_MAX:
        raise PublishError(
            f"{shown} is not a usable SOURCE_DATE_EPOCH: give whole seconds since "
            f"1970-01-01 UTC, from 0 to {EPOCH_MAX} (9999-12-31T23:59:59Z)"
        )
    return value


def explicit_epoch(
    explicit: int | None = None, environ: Mapping[str, str] | None = None
) -> tuple[int, str] | None:
    """The SOURCE_DATE_EPOCH the user chose (``--source-date-epoch``, else
    ``$SOURCE_DATE_EPOCH``), checked; None when neither is set (an empty variable is unset).
    A variable that is not a whole number of seconds in range is an error naming it."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return check_epoch(explicit, f"--source-date-epoch {explicit}"), "--source-date-epoch"
    raw = env.get(ENV_EPOCH, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        raise PublishError(
            f"{ENV_EPOCH}={shown(raw)} is not a usable SOURCE_DATE_EPOCH: give whole seconds "
            f"since 1970-01-01 UTC, from 0 to {EPOCH_MAX} (or unset it)"
        )
    return check_epoch(int(raw), f"{ENV_EPOCH}={raw}"), f"${ENV_EPOCH}"


def choose_epoch(
    path: Path | None, explicit: int | None = None, environ: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """The SOURCE_DATE_EPOCH to use and where it came from: ``explicit_epoch``, else the
    git commit time of ``path``, else the start of the current UTC day."""
    chosen = explicit_epoch(explicit, environ)
    if chosen is not None:
        return chosen
    if path is not None:
        full = path.resolve()
        stamp = git(["log", "-1", "--format=%ct", "--", full.name], full.parent)
        if stamp and stamp.isdigit():
            return int(stamp), f"git commit time of {path.name}"
    day = int(time.time()) // 86400 * 86400
    return day, "start of the UTC day the lock was made"


def _wheel_name(filename: str) -> tuple[str, str] | None:
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        return None
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def wheel_hashes(wheelhouse: Path | None) -> dict[tuple[str, str], list[str]]:
    """(normalised name, version) -> sha256 hex digests of the wheelhouse's wheels."""
    found: dict[tuple[str, str], list[str]] = {}
    if wheelhouse is None:
        return found
    for wheel in sorted(Path(wheelhouse).glob("*.whl")):
        key = _wheel_name(wheel.name)
        if key is None:
            continue
        sha = hashlib.sha256()
        with wheel.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
        found.setdefault(key, []).append(sha.hexdigest())
    return found


def make_lock(
    plan: BuildPlan,
    *,
    profile: str,
    python: Sequence[str],
    os_packages: Sequence[str],
    base_image: Mapping[str, Any],
    runtime_image: Mapping[str, Any],
    epoch: int,
    epoch_from: str,
    image_id: str,
    wheelhouse: Path | None = None,
) -> dict[str, Any]:
    """The lock document (a plain dict, written as sorted JSON)."""
    hashes = wheel_hashes(wheelhouse)
    pins = []
    for name, version in split_pins(python, "=="):
        entry: dict[str, Any] = {"name": name, "version": version}
        digests = hashes.get((re.sub(r"[-_.]+", "-", name).lower(), version))
        if digests:
            entry["sha256"] = digests
        pins.append(entry)
    return {
        "aibuild_lock": LOCK_VERSION,
        "profile": {
            "name": plan.profile_name,
            "ref": profile,
            "hash": plan.profile_hash,
        },
        "image": {"name": plan.image_name, "tag": plan.image_tag},
        "base_image": dict(base_image),
        "runtime_image": dict(runtime_image),
        "source_date_epoch": epoch,
        "source_date_epoch_from": epoch_from,
        "derived_from": {
            "image_id": image_id,
            "how": "pip freeze --all by the image's /opt/venv/bin/python and "
            "dpkg-query -W, run in a throwaway container of the built image",
        },
        "python": pins,
        "os": [{"name": n, "version": v} for n, v in split_pins(os_packages, "=")],
    }


LOCK_MARK = b'"aibuild_lock"'  # the first key of every lock file (sorted JSON)


def check_lock_target(path: Path, profile: str | None = None) -> None:
    """Refuse, before any work, a lock path that is a link, a device, the profile itself or
    a file aibuild did not write (one line)."""
    from aibuild.outfile import check_target, header_mark

    check_target(path, option="lock file", ours=header_mark(LOCK_MARK), inputs=[profile])


def write_lock(lock: Mapping[str, Any], path: Path, profile: str | None = None) -> Path:
    """The lock as sorted JSON, atomically, replacing only a lock aibuild wrote."""
    from aibuild.outfile import header_mark, write_text

    text = json.dumps(lock, indent=2, sort_keys=True) + "\n"
    return write_text(path, text, option="lock file", ours=header_mark(LOCK_MARK), inputs=[profile])


def read_lock(path: Path) -> dict[str, Any]:
    """A lock file, checked for shape; PublishError names the file when it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(
            f"no lock file {path}: run `aibuild lock` for this profile first"
        ) from None
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read the lock file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("aibuild_lock") != LOCK_VERSION:
        raise PublishError(f"{path} is not an aibuild lock file (version {LOCK_VERSION})")
    for key in ("profile", "python", "os", "source_date_epoch", "base_image"):
        if key not in data:
            raise PublishError(f"lock file {path} has no '{key}'")
    epoch = data["source_date_epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise PublishError(f"lock file {path}: source_date_epoch is not a whole number")
    check_epoch(epoch, f"lock file {path}: source_date_epoch {epoch}")
    return data


def constraints(lock: Mapping[str, Any]) -> tuple[str, ...]:
    """The lock's Python pins as pip constraints (``name==version``)."""
    return tuple(
        f"{p['name']}=={p['version']}"
        for p in lock["python"]
        if p["name"].lower() not in UNCONSTRAINED
    )


def check_lock(lock: Mapping[str, Any], plan: BuildPlan, path: Path, base_id: str | None) -> None:
    """Fail when the lock no longer matches the profile or its base image."""
    locked = lock["profile"]["hash"]
    if locked != plan.profile_hash:
        raise PublishError(
            f"lock file {path} does not match the profile any more: it was made for "
            f"profile hash {locked[:12]}, {plan.profile_name} now resolves to "
            f"{plan.profile_hash[:12]}. Run `aibuild lock` again to update it."
        )
    want = (lock.get("runtime_image") or lock["base_image"]).get("id")
    if want and base_id and want != base_id:
        raise PublishError(
            f"lock file {path} pins the base image {plan.runtime_image} as {want[:19]}, "
            f"but it is now {base_id[:19]} on this engine. Pull or load that image, "
            "or run `aibuild lock` again."
        )


def check_os_packages(lock: Mapping[str, Any], os_packages: Sequence[str]) -> list[str]:
    """OS packages whose version in a built image differs from the lock (or is new/missing)."""
    locked = {p["name"]: p["version"] for p in lock["os"]}
    built = dict(split_pins(os_packages, "="))
    problems = []
    for name in sorted(set(locked) | set(built)):
        if locked.get(name) != built.get(name):
            was, now = locked.get(name, "(absent)"), built.get(name, "(absent)")
            problems.append(f"{name}: locked {was}, built {now}")
    return problems


def locked_options(lock: Mapping[str, Any], options: RenderOptions) -> RenderOptions:
    """Render options that build from the lock: pip constraints and its SOURCE_DATE_EPOCH."""
    return replace(
        options,
        constraints=constraints(lock),
        source_date_epoch=int(lock["source_date_epoch"]),
    )
