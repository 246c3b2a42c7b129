"""The venv's layer plan: one ``uv pip install --no-deps`` per group of exact pins.

One install of torch and the requirements puts the CUDA libraries, triton, torch and
everything else into one multi-GB layer: any change to any of them makes every node fetch
all of it again. The plan splits the venv into groups, from the least to the most often
changed (Nix's ``buildLayeredImage`` and rechunk's package-aligned layers are the models):

1. the ``nvidia-*`` wheels: each one of ``NVIDIA_ALONE_BYTES`` or more alone (at most
   ``NVIDIA_ALONE_MAX`` of them, the largest), the rest together;
2. triton; 3. torch; 4. torch's other dependencies;
5. large third-party packages (a wheel of ``LARGE_BYTES`` or more), each alone;
6. the aibuild runtime's packages; 7. the profile's other packages;
8. the project's requirements.

Each group is installed with ``--no-deps`` and exact pins, so a layer's files depend only
on its own pins: a ``--reproducible`` build gives that layer the same digest whenever its
pins are unchanged (a torch release with the same CUDA libraries leaves the nvidia layers
alone). The pins come from a resolution over the wheelhouse (every wheel's
``Requires-Dist``, read from the wheel) or from a lock file's constraints; without
either, there is nothing exact to split and the image keeps its two installs.
"""

from __future__ import annotations

import functools
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from aibuild.errors import RenderError
from aibuild.profile.resolve import image_requirements

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan, RenderOptions

# A wheel this large (compressed) is a "large, stable third-party package": a layer of its own.
LARGE_BYTES = 50 * 1024 * 1024
# nvidia-* wheels this large get a layer each (cuBLAS, cuDNN, NCCL, ...), the others share one.
NVIDIA_ALONE_BYTES = 200 * 1024 * 1024
NVIDIA_ALONE_MAX = 6
LARGE_MAX = 3
# The venv's layers at most: with the base, system, user, venv, code, config and project
# layers, an image stays within about 20.
MAX_GROUPS = 14
TRITON_NAMES = frozenset({"triton", "pytorch-triton", "pytorch-triton-rocm"})
# Packages the venv already has from `python -m venv`: never reinstalled by a group.
SEEDED = frozenset({"pip"})


@dataclass(frozen=True)
class Pin:
    """One distribution to install: its normalised name, exact version and wheel size."""

    name: str
    version: str
    size: int = 0  # bytes of its wheel; 0 when unknown (pins from a lock alone)

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class LayerGroup:
    """One layer of the venv: what it is (``key``, ``title``) and its exact pins."""

    key: str  # "nvidia-cublas", "nvidia", "triton", "torch", "torch-deps", "large-x", ...
    title: str  # for the Dockerfile's comment
    pins: tuple[Pin, ...]
    torch_index: bool  # from torch's index (torch and its CUDA wheels) or the common one

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pins)


def _marker_env(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "platform_python_implementation": "CPython",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
    }


def _applies(req: Requirement, env: Mapping[str, str], extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))


def _wheel_fits(filename: str, python: str) -> bool:
    """Whether a wheel installs on the image: CPython ``python`` on Linux x86_64."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    cp = "cp" + python.replace(".", "")
    for tag in tags:
        interpreter_ok = tag.interpreter in (cp, "py3", "py2.py3", "cp3") or (
            tag.abi == "abi3"
            and tag.interpreter.startswith("cp3")
            and int(tag.interpreter[3:] or 0) <= int(cp[3:])
        )
        abi_ok = tag.abi in (cp, "abi3", "none")
        platform_ok = tag.platform == "any" or (
            tag.platform.endswith("_x86_64")
            and tag.platform.startswith(("manylinux", "linux", "musllinux"))
            and not tag.platform.startswith("musllinux")
        )
        if interpreter_ok and abi_ok and platform_ok:
            return True
    return False


@dataclass(frozen=True)
class _Wheel:
    path: Path
    version: Version
    size: int


def _index(wheelhouse: Path, python: str) -> dict[NormalizedName, list[_Wheel]]:
    found: dict[NormalizedName, list[_Wheel]] = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        if not _wheel_fits(path.name, python):
            continue
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        found.setdefault(name, []).append(_Wheel(path, version, path.stat().st_size))
    for wheels in found.values():
        wheels.sort(key=lambda w: w.version, reverse=True)
    return found


def _requires(wheel: Path) -> list[str]:
    """A wheel's ``Requires-Dist`` lines, read from its METADATA."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            meta = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
            if meta is None:
                return []
            text = archive.read(meta).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile) as exc:
        raise RenderError(f"cannot read the wheel {wheel}: {exc}") from None
    return HeaderParser().parsestr(text).get_all("Requires-Dist") or []


@dataclass(frozen=True)
class Resolution:
    """Exact pins, and which root's closure owns each one."""

    pins: dict[str, Pin]
    closures: dict[str, tuple[str, ...]]  # root label -> names its closure owns (in order)


def resolve_wheelhouse(
    wheelhouse: Path,
    roots: Sequence[tuple[str, Sequence[str]]],
    *,
    python: str,
    constraints: Sequence[str] = (),
    owners: Sequence[str] = (),
) -> Resolution | None:
    """Resolve ``roots`` (label, requirements), in order, over the wheels in ``wheelhouse``
    for CPython ``python`` on Linux x86_64: the newest fitting version of each name that
    satisfies the first requirement (and the constraints) naming it. None when a name has
    no fitting wheel there (its packages come from elsewhere: no exact plan to make).
    RenderError when a later requirement contradicts the version chosen.

    Which closure owns a name is decided apart from the versions, walking the roots in
    ``owners`` order (the layers' order; default: ``roots``' order): a package that an
    earlier layer needs stays in that layer whatever a later layer's requirements add."""
    wheels = _index(Path(wheelhouse), python)
    env = _marker_env(python)
    limits: dict[str, list[Requirement]] = {}
    for text in constraints:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        limits.setdefault(canonicalize_name(req.name), []).append(req)
    chosen: dict[str, tuple[_Wheel, str]] = {}  # name -> (wheel, the requirement that chose it)
    requires = functools.cache(_requires)  # each METADATA read once: resolution and owners
    for label, requirements in roots:
        queue: deque[tuple[Requirement, str]] = deque()
        for text in requirements:
            queue.append((Requirement(text), label))
        while queue:
            req, why = queue.popleft()
            name = canonicalize_name(req.name)
            if name in chosen:
                wheel, first = chosen[name]
                if not req.specifier.contains(wheel.version, prereleases=True):
                    raise RenderError(
                        f"cannot plan the venv's layers: {why} requires {req}, but {first} "
                        f"chose {name} {wheel.version} (the wheelhouse holds "
                        f"{', '.join(str(w.version) for w in wheels.get(name, []))})"
                    )
                if req.extras:  # the extras' own dependencies
                    queue.extend(
                        (r, f"{name} {wheel.version}")
                        for r in _dependencies(requires(wheel.path), env, req.extras)
                    )
                continue
            fits = [
                w
                for w in wheels.get(name, [])
                if req.specifier.contains(w.version, prereleases=True)
                and all(
                    c.specifier.contains(w.version, prereleases=True) for c in limits.get(name, [])
                )
            ]
            if not fits:
                return None
            wheel = fits[0]
            chosen[name] = (wheel, f"{why} ({req})")
            queue.extend(
                (r, f"{name} {wheel.version}")
                for r in _dependencies(requires(wheel.path), env, req.extras)
            )
    wanted = dict(roots)
    closures = _owners(
        [(label, wanted[label]) for label in owners or wanted],
        lambda name, extras: _dependencies(requires(chosen[name][0].path), env, extras),
    )
    pins = {n: Pin(n, str(w.version), w.size) for n, (w, _) in chosen.items()}
    return Resolution(pins, closures)


def _owners(
    roots: Sequence[tuple[str, Sequence[str]]],
    dependencies: Callable[[str, Iterable[str]], list[Requirement]],
) -> dict[str, tuple[str, ...]]:
    """label -> the names its closure reaches first, walking ``roots`` in order."""
    owned: set[str] = set()
    closures: dict[str, tuple[str, ...]] = {}
    for label, requirements in roots:
        added: list[str] = []
        queue = deque(Requirement(text) for text in requirements)
        while queue:
            req = queue.popleft()
            name = canonicalize_name(req.name)
            if name not in owned:
                owned.add(name)
                added.append(name)
                queue.extend(dependencies(name, req.extras))
            elif req.extras:  # an owned package's extras: their dependencies
                queue.extend(r for r in dependencies(name, req.extras)
                             if canonicalize_name(r.name) not in owned)  # fmt: skip
        closures[label] = tuple(added)
    return closures


def _dependencies(
    requires: Iterable[str], env: Mapping[str, str], extras: Iterable[str]
) -> list[Requirement]:
    """The ``Requires-Dist`` lines (``_requires``) that apply here, with these extras."""
    found = []
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if _applies(req, env, extras):
            found.append(req)
    return found


def _is_nvidia(name: str) -> bool:
    return name.startswith("nvidia-")


def group_pins(
    pins: Mapping[str, Pin],
    *,
    torch_closure: Iterable[str],
    runtime: Iterable[str] = (),
    profile: Iterable[str] = (),
    project: Iterable[str] = (),
) -> list[LayerGroup]:
    """The layer groups for ``pins``, least often changed first. ``torch_closure`` and the
    others name which pins torch, the aibuild runtime, the profile's ``software.pip`` and
    the project's requirements brought in (the first to bring a name owns it); a pin no
    list names goes with the profile's packages."""
    left = {n: p for n, p in pins.items() if n not in SEEDED}
    groups: list[LayerGroup] = []
    runtime, profile, project = tuple(runtime), tuple(profile), tuple(project)

    def take(names: Iterable[str]) -> list[Pin]:
        return [left.pop(n) for n in sorted(set(names)) if n in left]

    nvidia = take(n for n in left if _is_nvidia(n))
    alone = sorted(
        (p for p in nvidia if p.size >= NVIDIA_ALONE_BYTES), key=lambda p: (-p.size, p.name)
    )[:NVIDIA_ALONE_MAX]
    for pin in sorted(alone, key=lambda p: p.name):
        groups.append(LayerGroup(pin.name, f"{pin.name} (CUDA library)", (pin,), True))
    rest = tuple(p for p in nvidia if p not in alone)
    if rest:
        groups.append(LayerGroup("nvidia", "the other nvidia-* wheels", rest, True))
    triton = take(n for n in left if n in TRITON_NAMES)
    if triton:
        groups.append(LayerGroup("triton", "triton", tuple(triton), True))
    torch = take(["torch"])
    if torch:
        groups.append(LayerGroup("torch", "torch", tuple(torch), True))
    torch_deps = take(torch_closure)
    if torch_deps:
        groups.append(
            LayerGroup("torch-deps", "torch's other dependencies", tuple(torch_deps), False)
        )
    large = sorted(
        (p for p in left.values() if p.size >= LARGE_BYTES), key=lambda p: (-p.size, p.name)
    )[:LARGE_MAX]
    for pin in sorted(large, key=lambda p: p.name):
        take([pin.name])
        groups.append(
            LayerGroup(f"large-{pin.name}", f"{pin.name} (a large package)", (pin,), False)
        )
    for key, title, listed in (
        ("runtime", "the aibuild runtime's packages", runtime),
        ("profile", "the profile's other packages", profile),
        ("project", "the project's requirements", project),
    ):
        names = list(listed)
        if key == "profile":  # whatever no list named (a lock's extra pins)
            names += [n for n in left if n not in project]
        found = take(names)
        if found:
            groups.append(LayerGroup(key, title, tuple(found), False))
    check_groups(groups)
    return groups


def check_groups(groups: Sequence[LayerGroup]) -> None:
    """Refuse (RenderError) a plan that would install a package twice, or has too many layers."""
    owner: dict[str, str] = {}
    for group in groups:
        for pin in group.pins:
            name = canonicalize_name(pin.name)
            if name in owner:
                raise RenderError(
                    f"the venv's layer plan would install {name} twice (in the "
                    f"'{owner[name]}' layer and the '{group.key}' layer): each package "
                    "must be in exactly one layer"
                )
            owner[name] = group.key
    if len(groups) > MAX_GROUPS:
        raise RenderError(f"the venv's layer plan has {len(groups)} layers, more than {MAX_GROUPS}")


def lock_pins(constraints: Sequence[str]) -> dict[str, Pin]:
    """Exact ``name==version`` pins from a lock's constraints (sizes unknown)."""
    pins: dict[str, Pin] = {}
    for text in constraints:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;]+)\s*", text)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = Pin(name, match.group(2))
    return pins


def plan_venv_layers(plan: BuildPlan, options: RenderOptions) -> list[LayerGroup] | None:
    """The venv's layer groups for ``plan``, or None when no exact pins are known (no
    wheelhouse on this machine and no lock): the image then keeps its two installs.

    Pins come from a resolution over the local wheelhouse (with the lock's constraints
    when both are given), else from the lock's constraints alone (then the split is by
    name: nvidia-*, triton, torch, the rest)."""
    own_pip = list(plan.pip)
    project = list(plan.project.requirements) if plan.project else []
    named = {canonicalize_name(Requirement(r).name) for r in [*own_pip, *project]}
    runtime = [
        r for r in image_requirements(plan) if canonicalize_name(Requirement(r).name) not in named
    ]
    if options.wheelhouse and Path(options.wheelhouse).is_dir():
        resolution = resolve_wheelhouse(
            Path(options.wheelhouse),
            [
                ("torch", [f"torch=={plan.torch}"]),
                ("profile", own_pip),
                ("project", project),
                ("runtime", runtime),
            ],
            python=plan.python,
            constraints=options.constraints,
            owners=("torch", "runtime", "profile", "project"),  # the layers' order
        )
        if resolution is not None:
            return group_pins(
                resolution.pins,
                torch_closure=resolution.closures["torch"],
                runtime=resolution.closures["runtime"],
                profile=resolution.closures["profile"],
                project=resolution.closures["project"],
            )
    if options.constraints:
        pins = lock_pins(options.constraints)
        if "torch" in pins:
            return group_pins(pins, torch_closure=())
    return None
