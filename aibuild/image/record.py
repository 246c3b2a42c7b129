"""The build record: what went into an image and what became of it, one JSON file a build.

``aibuild image`` writes ``.aibuild/builds/<profile>-<time>-<id>.json`` under the current
directory (and the same bytes as ``latest.json``): the resolved plan, base and runtime
image identities, the render options, the build-arg names (never their values), the
exact Python and OS packages found in the image, and every step with its time and
whether it was cached. Later stages add to it: ``reproducible`` and ``sbom`` (the
normaliser), ``pushes`` (each push's reference and digest). This module is the only
one that knows the format: the others call ``write_record``, ``update_record``,
``find_records``, ``recorded_builds`` and ``latest_record``.

A record that cannot be read (edited by hand, cut short by a full disk) is skipped by
the readers and never stops a build or a push: ``update_record`` says so in its
return value instead of raising.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aibuild.image.helpers import BaseFacts
from aibuild.image.progress import BuildStep
from aibuild.profile.plan import BuildPlan

RECORD_DIR = Path(".aibuild") / "builds"
RECORD_VERSION = 1
LATEST = "latest.json"
SBOM_SUFFIX = ".cdx.json"


@dataclass
class BuildResult:
    """What ``aibuild image`` produced (before any publishing step)."""

    image_id: str
    tags: list[str]
    plan: BuildPlan
    record_path: Path
    steps: list[BuildStep]
    duration: float
    base: BaseFacts | None = None
    python_packages: list[str] = field(default_factory=list)
    os_packages: list[str] = field(default_factory=list)
    # with dev.jupyter: the dev image built beside it ({"image_id", "tag", "duration_s",
    # "cache_hits", "steps"})
    dev_image: dict[str, Any] | None = None

    @property
    def cache_hits(self) -> int:
        return sum(1 for step in self.steps if step.cached)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "tags": self.tags,
            "image_ref": self.plan.image_ref,
            "record": str(self.record_path),
            "duration_s": self.duration,
            "steps": [asdict(step) for step in self.steps],
            "cache_hits": self.cache_hits,
            "profile": self.plan.profile_name,
            "profile_hash": self.plan.profile_hash,
            **({"dev_image": self.dev_image} if self.dev_image else {}),
        }


def _dump(record: Mapping[str, Any]) -> str:
    return json.dumps(record, indent=2) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_record(path: Path) -> dict[str, Any] | None:
    """A record's content; None when it is missing or not a record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "image_id" in data else None


def write_record(result: BuildResult, extra: Mapping[str, Any], record_dir: Path) -> Path:
    """Write the build record and ``latest.json`` beside it; sets and returns its path."""
    record_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    short = result.image_id.removeprefix("sha256:")[:12]
    path = record_dir / f"{result.plan.profile_name}-{now:%Y%m%dT%H%M%SZ}-{short}.json"
    record = {
        "aibuild_record": RECORD_VERSION,
        "created": now.isoformat(timespec="seconds"),
        "image_id": result.image_id,
        "tags": result.tags,
        "image_ref": result.plan.image_ref,
        "plan": result.plan.to_dict(),
        **extra,
        "python_packages": result.python_packages,
        "os_packages": result.os_packages,
        "duration_s": result.duration,
        "cache_hits": result.cache_hits,
        "steps": [
            {**asdict(step), "installs_packages": step.installs_packages} for step in result.steps
        ],
    }
    text = _dump(record)
    _write(path, text)
    _write(record_dir / LATEST, text)
    result.record_path = path
    return path


def update_record(path: Path, **fields: Any) -> str | None:
    """Set top-level ``fields`` in the record at ``path`` (and in ``latest.json`` when that is
    the same build). Returns None, or why the record could not be updated."""
    data = read_record(path)
    if data is None:
        return f"build record {path} is missing or unreadable; not updated"
    data.update(fields)
    text = _dump(data)
    latest = path.with_name(LATEST)
    try:
        _write(path, text)
        current = read_record(latest)
        if current is None and latest.exists():
            return f"{latest} is unreadable and was left as it is ({path} was updated)"
        if current is None or current.get("image_id") == data.get("image_id"):
            _write(latest, text)
    except OSError as exc:
        return f"build record {path} could not be updated: {exc.strerror or exc}"
    return None


def record_push(path: Path, *, ref: str, digest: str, pinned: str, method: str) -> str | None:
    """Add a push (reference, digest, method) to a record's ``pushes``, replacing an earlier
    push of the same reference. Returns None, or why the record was not updated."""
    data = read_record(path)
    if data is None:
        return f"build record {path} is missing or unreadable; the digest was not recorded"
    pushes = [p for p in data.get("pushes") or [] if isinstance(p, dict) and p.get("ref") != ref]
    entry = {"ref": ref, "digest": digest, "pinned": pinned, "method": method}
    return update_record(path, pushes=[*pushes, entry])


def _records(record_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every readable record under ``record_dir``, newest first."""
    if not record_dir.is_dir():
        return
    for path in sorted(record_dir.glob("*.json"), reverse=True):
        if path.name == LATEST or path.name.endswith(SBOM_SUFFIX):
            continue
        data = read_record(path)
        if data is not None:
            yield path, data


def find_records(image_id: str, record_dir: Path) -> list[Path]:
    """Build records (newest first) whose image, or normalised image, is ``image_id``."""
    found = []
    for path, data in _records(record_dir):
        normalised = data.get("reproducible")
        ids = {
            data.get("image_id"),
            normalised.get("image_id") if isinstance(normalised, dict) else None,
        }
        if image_id in ids:
            found.append(path)
    return found


def unreadable_records(image_id: str, record_dir: Path) -> list[Path]:
    """Records named for ``image_id`` (``*-<short id>.json``) that cannot be read."""
    if not record_dir.is_dir():
        return []
    short = image_id.removeprefix("sha256:")[:12]
    return [
        path
        for path in sorted(record_dir.glob(f"*-{short}.json"), reverse=True)
        if path.name != LATEST and read_record(path) is None
    ]


def recorded_builds(profile_hash: str, record_dir: Path) -> Iterator[dict[str, Any]]:
    """Records (newest first) of builds of exactly this profile hash that hold package lists."""
    for _, data in _records(record_dir):
        plan = data.get("plan")
        same = isinstance(plan, dict) and plan.get("profile_hash") == profile_hash
        if same and data.get("python_packages"):
            yield data


def latest_record(record_dir: Path = RECORD_DIR) -> dict[str, Any] | None:
    """The most recent build record under ``record_dir`` (None when there is none, or it
    cannot be read)."""
    return read_record(record_dir / LATEST)


def sbom_path(record_path: Path) -> Path:
    """Where a build's SBOM is kept: ``<record>.cdx.json`` beside its record."""
    return record_path.with_name(record_path.stem + SBOM_SUFFIX)


__all__ = [
    "RECORD_DIR",
    "BuildResult",
    "find_records",
    "latest_record",
    "read_record",
    "record_push",
    "recorded_builds",
    "sbom_path",
    "unreadable_records",
    "update_record",
    "write_record",
]
