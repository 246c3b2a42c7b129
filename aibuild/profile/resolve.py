"""Validate a ``Profile`` against the schema and the knowledge base, and resolve it
into a frozen ``BuildPlan``.

Every problem is collected (not first-fail) as a ``Diagnostic`` pointing at the
file, line and column of the offending key, with a fix in its message. Facts
marked uncertain in the knowledge base decide at most a warning, except where
the uncertain fact is not needed for the verdict.

Resolution fills what the user left out: the CUDA version (the newest that the
torch release has wheels for, that can run on the GPU and that the host driver
allows), the exact base image tags, the torch wheel index, the arch list and the
minimum driver.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from aibuild import knowledge as kb
from aibuild import vcs
from aibuild.errors import Diagnostic, ProfileError
from aibuild.profile import project as projects
from aibuild.profile import schema
from aibuild.profile.load import Profile, load_profile
from aibuild.profile.plan import DEV_TAG_SUFFIX, BuildPlan, ProjectPlan, RenderOptions

TORCH_INDEX = "https://download.pytorch.org/whl"
# Packages the aibuild runtime (the embedded trainer's CLI) needs inside the image, besides torch.
RUNTIME_REQUIREMENTS = ("click>=8.1", "packaging>=23", "pyyaml>=6.0")
# What `dev.jupyter: true` adds in the `<tag>-dev` image (never in the training image).
DEV_JUPYTER_REQUIREMENTS = ("jupyterlab>=4.2,<5",)
DEBIAN_CODENAMES = {"debian12": "bookworm", "debian13": "trixie"}


# --------------------------------------------------------------------------- schema


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known keys: {', '.join(options)}" if options else ""


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _runtime_conflict(req: Requirement) -> str | None:
    """Why a software.pip requirement pins a package the aibuild runtime needs to a version
    the runtime cannot use (None when it does not)."""
    runtime = {_name(r): Requirement(r) for r in RUNTIME_REQUIREMENTS}
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
    checked that it admits a version the runtime can use). One list for the rendered
    requirements.txt, the wheelhouse, the lock and the SBOM, so they always agree."""
    own = [*plan.pip, *(plan.project.requirements if plan.project else ())]
    named = {_name(r) for r in own}
    runtime = [r for r in RUNTIME_REQUIREMENTS if _name(r) not in named]
    return sorted(dict.fromkeys([*own, *runtime]), key=str.lower)


def dev_requirements(plan: BuildPlan) -> list[str]:
    """What the ``<tag>-dev`` image installs on top of the image's requirements."""
    return list(DEV_JUPYTER_REQUIREMENTS) if plan.dev_jupyter else []


def validate_schema(profile: Profile) -> list[Diagnostic]:
    """Unknown keys, types, allowed values, and the format of every string."""
    diags: list[Diagnostic] = []
    data = profile.data

    def walk(mapping: dict[str, Any], prefix: str) -> None:
        known = schema.children(prefix)
        for key, value in mapping.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in known:
                where = f"in '{prefix}'" if prefix else "at the top level"
                diags.append(
                    profile.diag(
                        "error", f"unknown key '{key}' {where}{_did_you_mean(key, known)}", path
                    )
                )
                continue
            field = schema.BY_PATH[path]
            if value is None and field.type != "section" and not field.required:
                continue  # null means "use the default"
            if field.choices and value not in field.choices:
                diags.append(
                    profile.diag(
                        "error",
                        f"'{schema._show(value)}' is not allowed; "
                        f"use one of: {', '.join(field.choices)}"
                        + _did_you_mean(str(value), field.choices).replace(
                            "; known keys:", "; options:"
                        ),
                        path,
                    )
                )
                continue
            if field.check is not None:
                problem = field.check(value)
                if problem:
                    diags.append(profile.diag("error", f"{key} {problem}", path))
                    continue
            if field.type == "section" and path != "training":
                walk(value, path)

    walk(data, "")
    software = data.get("software") if isinstance(data.get("software"), dict) else {}
    assert isinstance(software, dict)
    for i, item in enumerate(
        software.get("pip") or [] if isinstance(software.get("pip"), list) else []
    ):
        problem = schema.check_pip_item(item)
        if problem:
            diags.append(profile.diag("error", problem, f"software.pip[{i}]"))
        elif canonicalize_name(Requirement(item).name) in ("torch", "aibuild"):
            diags.append(
                profile.diag(
                    "error",
                    f"'{item}' does not belong in software.pip; set software.torch instead",
                    f"software.pip[{i}]",
                )
            )
        else:
            problem = _runtime_conflict(Requirement(item))
            if problem:
                diags.append(profile.diag("error", problem, f"software.pip[{i}]"))
    for i, item in enumerate(
        software.get("apt") or [] if isinstance(software.get("apt"), list) else []
    ):
        problem = schema.check_apt_item(item)
        if problem:
            diags.append(profile.diag("error", problem, f"software.apt[{i}]"))
    env = software.get("env")
    if isinstance(env, dict):
        for key, value in env.items():
            path = f"software.env.{key}"
            if not schema.ENV_KEY_RE.fullmatch(key):
                diags.append(
                    profile.diag(
                        "error",
                        f"'{schema._show(key)}' is not a POSIX environment variable name "
                        "(letters, digits, '_'; not starting with a digit)",
                        path,
                    )
                )
            elif isinstance(value, (dict, list)) or value is None:
                diags.append(
                    profile.diag("error", f"{key} must be a string, number or boolean", path)
                )
            elif schema.CONTROL_RE.search(str(value)):
                diags.append(
                    profile.diag(
                        "error", f"{key} must not contain newlines or control characters", path
                    )
                )
    training = data.get("training")
    if isinstance(training, dict):
        from aibuild.train.config import validate_training

        for key, message in validate_training(training):
            diags.append(profile.diag("error", message, f"training.{key}" if key else "training"))
    return diags


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Candidate:
    """One CUDA version evaluated for the plan."""

    cuda: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    full: str | None = None
    builder: str | None = None
    runtime: str | None = None
    min_driver: str | None = None
    driver_ok: bool = True


def toolkit_can_target(cuda: str, cc: str) -> bool | None:
    targets = kb.targets_for(cuda)
    if targets is None:
        return None
    major, minor = kb.cc_key(cc)
    return f"{major}{minor}" in targets.targets


def first_cuda_for(cc: str) -> str | None:
    """The oldest CUDA release whose nvcc can target CC."""
    for version in sorted(kb.cuda_targets(), key=kb.vkey):
        if toolkit_can_target(version, cc):
            return version
    return None


def torch_cuda_pairs_for(cc: str, python: str | None = None) -> list[tuple[str, str]]:
    """(torch minor, cuda) pairs, oldest torch first, whose wheels run on CC."""
    out = []
    for minor, rel in sorted(kb.torch_releases().items(), key=lambda kv: kb.vkey(kv[0])):
        if python and not (kb.vkey(rel.python_min) <= kb.vkey(python) <= kb.vkey(rel.python_max)):
            continue
        for cuda in rel.cuda:
            arch = kb.wheel_archs().get((minor, cuda))
            if arch and kb.wheel_covers(cc, arch) and toolkit_can_target(cuda, cc):
                out.append((minor, cuda))
    return out


def version_lt(a: str, b: str) -> bool:
    return kb.vkey(a) < kb.vkey(b)


class Resolver:
    """Applies the compatibility rules to one profile; collects diagnostics."""

    def __init__(self, profile: Profile, options: RenderOptions) -> None:
        self.p = profile
        self.o = options
        self.diags: list[Diagnostic] = []
        d = profile.data
        self.hw: dict[str, Any] = d.get("hardware") or {}
        self.sw: dict[str, Any] = d.get("software") or {}
        self.run_cfg: dict[str, Any] = d.get("run") or {}
        self.image_cfg: dict[str, Any] = d.get("image") or {}
        self.toolkit = bool(self.sw.get("cuda_toolkit"))
        self.source = self.sw.get("cuda_source") or ("image" if self.toolkit else "wheels")

    def error(self, message: str, key: str) -> None:
        self.diags.append(self.p.diag("error", message, key))

    def warn(self, message: str, key: str) -> None:
        self.diags.append(self.p.diag("warning", message, key))

    # -- torch ---------------------------------------------------------------
    def resolve_torch(self) -> tuple[str, kb.TorchRelease] | None:
        spec = str(self.sw.get("torch") or kb.DEFAULT_TORCH)
        known = sorted(kb.TORCH_PATCHES.values(), key=Version)
        if spec[:1] in "<>=!~":
            # A specifier picks the newest verified release it admits; a release the knowledge
            # base does not know as released is taken only when nothing else matches.
            admitted = [v for v in known if Version(v) in SpecifierSet(spec)]
            verified = [v for v in admitted if not kb.torch_unverified(kb.torch_minor(v))]
            matches = verified or admitted
            if not matches:
                self.error(
                    f"no known torch release matches '{spec}'; known: {', '.join(known)}",
                    "software.torch",
                )
                return None
            version = matches[-1]
        elif spec.count(".") == 1:
            version = kb.TORCH_PATCHES.get(spec, "")
            if not version:
                self.error(
                    f"torch {spec} is not in the knowledge base; known: {', '.join(known)}",
                    "software.torch",
                )
                return None
        else:
            version = str(Version(spec))
            if Version(version).local:
                self.error(
                    f"write torch without a local suffix ('{spec}'): the CUDA variant comes from "
                    "software.cuda",
                    "software.torch",
                )
                return None
        minor = kb.torch_minor(version)
        rel = kb.torch_releases().get(minor)
        if rel is None:
            self.error(
                f"torch {minor} is not in the knowledge base; known releases: "
                f"{', '.join(sorted(kb.torch_releases(), key=kb.vkey))}",
                "software.torch",
            )
            return None
        if kb.torch_unverified(minor):
            self.warn(
                f"torch {minor} is not verified as released (knowledge base: {rel.notes})",
                "software.torch",
            )
        return version, rel

    def check_python(self, python: str, torch: str, rel: kb.TorchRelease) -> None:
        """Python must be within the release's range. For releases known only from
        secondary sources, a Python newer than the recorded maximum is a warning (the
        range may have grown); one older than the minimum stays an error."""
        low, high = kb.vkey(rel.python_min), kb.vkey(rel.python_max)
        if low <= kb.vkey(python) <= high:
            return
        fits = [
            m
            for m, r in kb.torch_releases().items()
            if kb.vkey(r.python_min) <= kb.vkey(python) <= kb.vkey(r.python_max)
        ]
        hint = ""
        if fits:
            lo, hi = min(fits, key=kb.vkey), max(fits, key=kb.vkey)
            hint = (
                f", or torch {lo} to {hi} for Python {python}" if lo != hi else f", or torch {lo}"
            )
        nearest = rel.python_min if kb.vkey(python) < low else rel.python_max
        message = (
            f"torch {torch} supports Python {rel.python_min} to {rel.python_max}, not {python}; "
            f"use python {nearest}{hint}"
        )
        (self.warn if rel.uncertain and kb.vkey(python) > high else self.error)(
            message, "software.python"
        )

    # -- CUDA ----------------------------------------------------------------
    def evaluate(
        self,
        cuda: str,
        torch: str,
        rel: kb.TorchRelease,
        gpu: kb.Gpu,
        os_name: str,
        cudnn: bool,
        driver: str | None,
    ) -> Candidate:
        errors: list[str] = []
        warnings: list[str] = []
        minor = rel.minor
        cc = gpu.cc
        gpu_desc = f"{kb.sm(cc)} ({gpu.name}, compute capability {cc})"
        targets = kb.targets_for(cuda)
        can = toolkit_can_target(cuda, cc)
        if targets is None:
            errors.append(
                f"CUDA {cuda} is not in the knowledge base; known: "
                f"{', '.join(sorted(kb.cuda_targets(), key=kb.vkey))}"
            )
            return Candidate(cuda, tuple(errors), ())
        if not can:
            first = first_cuda_for(cc)
            with_wheels = [
                c
                for c in rel.cuda
                if toolkit_can_target(c, cc)
                and (a := kb.wheel_archs().get((minor, c))) is not None
                and kb.wheel_covers(cc, a)
            ]
            if first and version_lt(cuda, first):
                fix = f"CUDA >= {first} can; use " + (
                    f"cuda {with_wheels[-1]} (torch {minor} has wheels for {', '.join(rel.cuda)})"
                    if with_wheels
                    else self.torch_fix(cc)
                )
            else:
                newer_dropped = f"CUDA {cuda.split('.')[0]} dropped it"
                fix = f"{newer_dropped}; use " + (
                    f"cuda {with_wheels[-1]} (torch {minor} has "
                    f"{with_wheels[-1]} wheels with {kb.sm(cc)})"
                    if with_wheels
                    else "a CUDA 12.x stack: " + self.torch_fix(cc)
                )
            errors.append(f"CUDA {cuda} cannot target {gpu_desc}: {fix}")
            return Candidate(cuda, tuple(errors), ())
        if targets.inferred_from:
            pass  # documented: same-major rows carry over (e.g. 13.2 targets as 13.0)
        if cuda not in rel.cuda:
            message = (
                f"torch {torch} has no wheels for CUDA {cuda}; it has {', '.join(rel.cuda)}"
                f" (use cuda {rel.cuda[-1]}, or {self.torch_for_cuda(cuda)})"
            )
            in_range = kb.vkey(rel.cuda[0]) <= kb.vkey(cuda) <= kb.vkey(rel.cuda[-1])
            (warnings if rel.uncertain and in_range else errors).append(message)
        else:
            arch = kb.wheel_archs().get((minor, cuda))
            if arch is None:
                warnings.append(
                    f"the GPU architectures in torch {minor} cu{cuda.replace('.', '')} wheels are "
                    f"not recorded; {kb.sm(cc)} is assumed to be included"
                )
            elif not kb.wheel_covers(cc, arch):
                built = ", ".join(
                    kb.sm(a.rstrip("a")) + ("a" if a.endswith("a") else "") for a in arch.sass
                )
                ptx = f" + PTX compute_{arch.ptx[0].replace('.', '')}" if arch.ptx else ""
                message = (
                    f"torch {minor} cu{cuda.replace('.', '')} "
                    f"wheels are built for {built}{ptx}, which do "
                    f"not run on {gpu_desc}; use {self.torch_fix(cc)}"
                )
                (warnings if arch.uncertain else errors).append(message)
        # base image: nvidia/cuda only for the image source
        full = builder = runtime = None
        if self.source == "image":
            flavours = self.image_flavours(cudnn)
            flavour_ok = self.pick_images(cuda, os_name, flavours)
            if flavour_ok is None:
                oses = sorted({i.os for i in kb.cuda_images() if i.cuda == cuda})
                want = " with cuDNN" if cudnn and self.toolkit else ""
                fix = (
                    f"use os {' or '.join(o for o in oses if o in schema.OS_CHOICES)}"
                    if oses
                    else "use another cuda"
                )
                errors.append(
                    f"there is no nvidia/cuda {cuda} {'/'.join(flavours)} image{want} for "
                    f"{os_name}: {fix}"
                )
                return Candidate(cuda, tuple(errors), tuple(warnings))
            full, builder, runtime = flavour_ok
            min_driver, note = kb.driver_for(full)
        else:
            # torch's wheels carry the CUDA runtime of that minor release (its update is
            # the wheels' business): the minor's first release sets the driver it wants.
            min_driver, note = kb.driver_for(f"{cuda}.0")
        driver_ok = True
        if driver:
            floor = kb.compat_floor(cuda)
            stack = f"CUDA {full}" if full else f"CUDA {cuda} (torch's wheels)"
            if floor and version_lt(driver, floor) and self.source == "image":
                if not kb.forward_compatible(gpu):
                    errors.append(
                        f"driver {driver} is too old for CUDA {cuda} (its "
                        f"minor-version-compatibility floor is {floor}), and forward "
                        f"compatibility does not run on {gpu.name} (datacenter GPUs only): "
                        "upgrade the driver or use an older cuda"
                    )
                else:
                    warnings.append(
                        f"driver {driver} is below CUDA {cuda}'s floor {floor}: it runs "
                        f"through forward compatibility (the cuda-compat libraries in "
                        f"{runtime}; datacenter GPUs only)"
                    )
                driver_ok = False
            elif floor and version_lt(driver, floor):
                hint = (
                    ""
                    if not kb.forward_compatible(gpu)
                    else "; or, for forward compatibility on this datacenter GPU, "
                    "software.cuda_source: image (nvidia/cuda carries the cuda-compat "
                    "libraries)"
                )
                errors.append(
                    f"driver {driver} is too old for CUDA {cuda}: "
                    "its minor-version-compatibility floor "
                    f"is {floor} ({stack} wants >= "
                    f"{min_driver or floor}); upgrade the driver or "
                    f"use an older cuda{hint}"
                )
                driver_ok = False
            elif min_driver and version_lt(driver, min_driver):
                warnings.append(
                    f"driver {driver} is below {stack}'s minimum {min_driver}: it runs through "
                    "minor-version compatibility (no PTX JIT); "
                    f"upgrade to >= {min_driver} for full "
                    f"support"
                )
                driver_ok = False
            elif min_driver is None:
                warnings.append(f"cannot check driver {driver}: {note}")
        return Candidate(
            cuda, tuple(errors), tuple(warnings), full, builder, runtime, min_driver, driver_ok
        )

    def torch_fix(self, cc: str) -> str:
        pairs = torch_cuda_pairs_for(cc)
        if not pairs:
            return "a GPU that PyTorch's official wheels support"
        minor, cuda = pairs[0]
        return f"torch >= {minor} with cuda {cuda}"

    def torch_for_cuda(self, cuda: str) -> str:
        minors = [m for m, r in kb.torch_releases().items() if cuda in r.cuda]
        if not minors:
            return f"no torch release has CUDA {cuda} wheels"
        ordered = sorted(minors, key=kb.vkey)
        return (
            f"torch {ordered[0]} to {ordered[-1]} for cuda {cuda}"
            if len(ordered) > 1
            else f"torch {ordered[0]}"
        )

    def image_flavours(self, cudnn: bool) -> tuple[str, str]:
        """(builder, runtime) nvidia/cuda flavours for the image source. With the toolkit:
        devel to compile (cuDNN headers when asked), and base to run (cudart and the
        forward-compatibility libraries; torch brings the rest). Without: one stage on
        base, or on runtime with cuDNN for a consumer other than torch that needs it."""
        if self.toolkit:
            return ("cudnn-devel" if cudnn else "devel", "base")
        one = "cudnn-runtime" if cudnn else "base"
        return (one, one)

    def pick_images(
        self, cuda: str, os_name: str, flavours: tuple[str, str]
    ) -> tuple[str, str, str] | None:
        """(full, builder tag, runtime tag): the newest update of CUDA X.Y that has both
        flavours for this OS (NVIDIA's cuDNN tag names vary)."""
        images = [i for i in kb.cuda_images() if i.cuda == cuda and i.os == os_name]
        by_full: dict[str, dict[str, str]] = {}
        for img in images:
            key = f"cudnn-{img.flavor}" if img.cudnn != "none" else img.flavor
            by_full.setdefault(img.full, {})[key] = img.tag
        complete = [f for f, tags in by_full.items() if set(flavours) <= set(tags)]
        if not complete:
            return None
        full = max(complete, key=kb.vkey)
        builder, runtime = flavours
        return (
            full,
            f"nvidia/cuda:{by_full[full][builder]}",
            f"nvidia/cuda:{by_full[full][runtime]}",
        )

    # -- the whole plan --------------------------------------------------------
    def resolve(self) -> BuildPlan | None:
        hw, sw = self.hw, self.sw
        accelerator = hw.get("accelerator") or ("nvidia" if hw.get("gpu") else "cpu")
        nvidia = accelerator == "nvidia"
        os_name = self.o.base_os or sw.get("os") or ("ubuntu22.04" if nvidia else "debian12")
        if self.o.base_os and sw.get("os") and sw["os"] != self.o.base_os:
            self.warn(
                f"the base image is {self.o.base_os}, not "
                f"{sw['os']}: building for {self.o.base_os}",
                "software.os",
            )
        python = str(sw.get("python") or self.o.base_python or "3.11")
        torch_rel = self.resolve_torch()
        if torch_rel is None:
            return None
        torch, rel = torch_rel
        self.check_python(python, torch, rel)

        explicit_base = self.o.base_image or sw.get("base_image")
        self.check_cuda_source(nvidia, explicit_base)
        gpu = None
        cuda = full = builder = runtime = min_driver = None
        arch_list: tuple[str, ...] = ()
        driver = hw.get("driver")
        cudnn = bool(sw.get("cudnn", True)) and nvidia
        gpu_count = hw.get("gpus")
        if nvidia:
            if not hw.get("gpu"):
                self.error(
                    "hardware.gpu is required when the accelerator is nvidia (e.g. gpu: A100)",
                    "hardware",
                )
                return None
            gpu = kb.find_gpu(str(hw["gpu"]))
            if gpu is None:
                self.error(
                    f"unknown GPU '{hw['gpu']}'"
                    + _did_you_mean(
                        str(hw["gpu"]).lower().replace(" ", ""), kb.gpu_names()
                    ).replace("known keys", "known"),
                    "hardware.gpu",
                )
                return None
            if gpu.uncertain:
                self.warn(
                    f"{gpu.name}'s compute capability {gpu.cc} "
                    f"rests on secondary sources ({gpu.sources})",
                    "hardware.gpu",
                )
            if gpu_count is None:
                gpu_count = 1
            elif gpu_count < 1:
                self.error("an nvidia profile needs at least one GPU (gpus: 1)", "hardware.gpus")
            chosen = self.choose_cuda(torch, rel, gpu, os_name, cudnn, driver)
            if chosen is None:
                return None
            cuda, full, builder, runtime, min_driver = (
                chosen.cuda,
                chosen.full,
                chosen.builder,
                chosen.runtime,
                chosen.min_driver,
            )
            arch_list = (gpu.cc,)
            variant = "cu" + cuda.replace(".", "")
            if explicit_base:
                builder = runtime = explicit_base
            elif self.source == "wheels":
                builder = runtime = self.slim_base(python, os_name)
        else:
            for key in ("gpu", "driver"):
                if hw.get(key):
                    self.error(
                        f"hardware.{key} is set but the accelerator is cpu; remove it or set "
                        "hardware.accelerator: nvidia",
                        f"hardware.{key}",
                    )
            if sw.get("cuda"):
                self.error(
                    "software.cuda is set but the accelerator is cpu; remove it or set "
                    "hardware.accelerator: nvidia",
                    "software.cuda",
                )
            gpu_count = gpu_count or 0
            variant = "cpu"
            builder = runtime = explicit_base or self.slim_base(python, os_name)
        assert builder is not None and runtime is not None
        python_install = self.python_install(
            python, os_name, builder, explicit_base is not None, nvidia
        )

        project = self.resolve_project(torch)
        dev_jupyter = bool((self.p.data.get("dev") or {}).get("jupyter"))
        run_gpus = self.run_cfg.get("gpus")
        run_gpus = str(run_gpus) if run_gpus is not None else ("all" if nvidia else "none")
        if not nvidia and run_gpus != "none":
            self.warn(
                f"run.gpus is {run_gpus} but the accelerator is cpu; the image has no CUDA",
                "run.gpus",
            )
        if self.has_errors():
            return None
        training = self.p.data.get("training") or {}
        compile_deps = bool(training.get("compile"))
        torch_index = (
            None if nvidia and rel.pypi_cuda == cuda else f"{TORCH_INDEX}/{variant}"
        )  # PyPI's own torch is that CUDA build: PyPI serves it
        name = self.p.name
        pip_reqs = sorted({str(Requirement(r)) for r in sw.get("pip") or []}, key=str.lower)
        apt = sorted(set(sw.get("apt") or []))
        env = tuple(sorted((k, _env_value(v)) for k, v in (sw.get("env") or {}).items()))
        image_name = self.image_cfg.get("name") or "aibuild"
        image_tag = self.image_cfg.get("tag") or f"{name}-torch{torch}-{variant}"
        if dev_jupyter and len(image_tag) + len(DEV_TAG_SUFFIX) > 128:
            self.error(
                f"the dev image's tag '{image_tag}{DEV_TAG_SUFFIX}' is longer than 128 "
                "characters: set a shorter image.tag",
                "dev.jupyter",
            )
            return None
        resolved = self.resolved_profile(
            name,
            accelerator,
            gpu,
            gpu_count,
            os_name,
            cuda,
            cudnn,
            python,
            torch,
            builder if explicit_base else None,
            run_gpus,
        )
        profile_yaml = yaml.safe_dump(
            resolved, sort_keys=True, default_flow_style=False, allow_unicode=True
        )
        # The project's requirements are part of what the image is (its code is not: a code
        # edit must not change the plan, nor any layer before the code's).
        hashed = dict(resolved)
        if project is not None:
            hashed["_requirements"] = project.requirements
        profile_hash = hashlib.sha256(
            json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).hexdigest()
        return BuildPlan(
            profile_name=name,
            description=str(self.p.data.get("description") or ""),
            profile_hash=profile_hash,
            profile_yaml=profile_yaml,
            accelerator=accelerator,
            gpu=gpu.name if gpu else None,
            gpu_count=int(gpu_count),
            compute_capability=gpu.cc if gpu else None,
            arch_list=arch_list,
            driver=str(driver) if driver else None,
            min_driver=min_driver,
            os=os_name,
            os_family="debian" if os_name.startswith("debian") else "ubuntu",
            cuda=cuda,
            cuda_full=full,
            cudnn=cudnn,
            cuda_source=self.source if nvidia else None,
            cuda_toolkit=self.toolkit and nvidia,
            cuda_stack=self.describe_stack(nvidia, cuda, full, builder, runtime, explicit_base),
            require_cuda=f"cuda>={cuda}" if nvidia and self.source == "wheels" else None,
            compile_deps=compile_deps,
            python=python,
            python_install=python_install,
            torch=torch,
            torch_variant=variant,
            torch_index_url=torch_index,
            base_image=builder,
            runtime_image=runtime,
            pip=tuple(pip_reqs),
            apt=tuple(apt),
            env=env,
            training=tuple(sorted(training.items())),
            run_gpus=run_gpus,
            run_shm_size=str(self.run_cfg.get("shm_size") or ("16g" if nvidia else "2g")),
            run_ipc=str(self.run_cfg.get("ipc") or "private"),
            image_name=image_name,
            image_tag=image_tag,
            image_compression=str(self.image_cfg.get("compression") or "gzip"),
            warnings=tuple(d.format() for d in self.diags if d.severity == "warning"),
            project=project,
            dev_jupyter=dev_jupyter,
        )

    # -- the user's project ------------------------------------------------------
    def resolve_project(self, torch: str) -> ProjectPlan | None:
        """``project:`` resolved: its folder (which must exist), its requirements read and
        checked like software.pip (torch itself must admit the image's torch and is left
        to the torch layer), its command and workdir, and its git source labels."""
        section = self.p.data.get("project")
        if section is None:
            return None
        where = self.p.pos("project.path").file
        root = projects.project_dir(section.get("path"), where)
        if not root.is_dir():
            shown = section.get("path") or "."
            self.error(
                f"project folder {shown} not found ({root} "
                f"{'is not a folder' if root.exists() else 'does not exist'}; project.path is "
                f"relative to {'the current directory' if where == '--set' else where})",
                "project.path",
            )
            return None
        requirements: list[str] = []
        requirements_file = None
        if section.get("requirements"):
            requirements_file = root / str(section["requirements"])
            try:
                listed = projects.read_requirements(requirements_file)
            except projects.RequirementsError as exc:
                self.error(str(exc), "project.requirements")
                return None
            for item in listed:
                problem = self._project_requirement(Requirement(item), torch)
                if problem:
                    self.error(f"{requirements_file}: {problem}", "project.requirements")
                elif _name(item) != "torch":
                    requirements.append(item)
        return ProjectPlan(
            path=str(root),
            exclude=tuple(section.get("exclude") or ()),
            requirements_file=str(requirements_file) if requirements_file else None,
            requirements=tuple(sorted(dict.fromkeys(requirements), key=str.lower)),
            command=projects.command_argv(section.get("command")),
            workdir=str(section.get("workdir") or "/workspace").rstrip("/") or "/",
            labels=tuple(sorted(vcs.source_labels(root).items())),
        )

    @staticmethod
    def _project_requirement(req: Requirement, torch: str) -> str | None:
        """Why a project requirement cannot go into the image's requirements layer."""
        name = canonicalize_name(req.name)
        if name == "aibuild":
            return f"'{req}': aibuild is in every image already (its trainer, `aibuild train`)"
        if name == "torch":
            if req.specifier and not req.specifier.contains(torch, prereleases=True):
                return (
                    f"'{req}' excludes the image's torch {torch}: set software.torch in the "
                    "profile to a version it admits"
                )
            return None
        return _runtime_conflict(req)

    def python_install(
        self, python: str, os_name: str, base: str, explicit: bool, nvidia: bool
    ) -> str:
        """How Python gets into the image: 'base' (the base image has it), 'system' (the OS's own
        python3 from apt, when its version matches) or 'uv' (a uv-managed CPython otherwise)."""
        if explicit and self.o.base_python is not None:
            if self.o.base_python == python:
                return "base"
        elif base.startswith("python:"):
            return "base"
        if kb.OS_PYTHON.get(os_name) == python:
            return "system"
        return "uv"

    def slim_base(self, python: str, os_name: str) -> str:
        """The OS base without any CUDA: ``python:X.Y-slim-<codename>`` on Debian (Python
        included), the plain distro image on Ubuntu."""
        if os_name.startswith("debian"):
            return f"python:{python}-slim-{DEBIAN_CODENAMES[os_name]}"
        return f"ubuntu:{os_name.removeprefix('ubuntu')}"

    def check_cuda_source(self, nvidia: bool, explicit_base: str | None) -> None:
        """The CUDA source and the toolkit agree with each other and with the profile."""
        asked = self.sw.get("cuda_source")
        if not nvidia:
            for key in ("cuda_source", "cuda_toolkit"):
                if self.sw.get(key):
                    self.error(
                        f"software.{key} is set but the accelerator is cpu; remove it or set "
                        "hardware.accelerator: nvidia",
                        f"software.{key}",
                    )
            return
        if self.toolkit and asked == "wheels":
            self.error(
                "software.cuda_toolkit needs nvcc, which only an nvidia/cuda devel stage has: "
                "set software.cuda_source: image (or leave cuda_source out)",
                "software.cuda_source",
            )
        if explicit_base and asked == "image":
            self.error(
                "software.cuda_source: image picks an nvidia/cuda base, but a base image is "
                "given (software.base_image or --base-image): keep one of them",
                "software.cuda_source",
            )
        if explicit_base and self.toolkit:
            self.error(
                "software.cuda_toolkit builds on an nvidia/cuda devel image, but a base image "
                "is given (software.base_image or --base-image): keep one of them",
                "software.cuda_toolkit",
            )

    def describe_stack(
        self,
        nvidia: bool,
        cuda: str | None,
        full: str | None,
        builder: str,
        runtime: str,
        explicit_base: str | None,
    ) -> str:
        """Where the image's CUDA comes from, in one line (``check`` and the header)."""
        if not nvidia:
            return "no CUDA (cpu)"
        wheels = f"CUDA {cuda} from torch's wheels (nvidia-* packages, loaded via torch's RPATH)"
        if explicit_base:
            return f"{wheels}, on the given base {builder}"
        if self.source == "wheels":
            return f"{wheels}, on {runtime}: one CUDA stack"
        if self.toolkit:
            return (
                f"{wheels}; nvcc {full} in the {builder} builder stage (its CUDA matches "
                f"torch's), {runtime} to run"
            )
        return f"{wheels}; {runtime} for what else needs CUDA {full} (chosen: cuda_source: image)"

    def choose_cuda(
        self,
        torch: str,
        rel: kb.TorchRelease,
        gpu: kb.Gpu,
        os_name: str,
        cudnn: bool,
        driver: str | None,
    ) -> Candidate | None:
        asked = self.sw.get("cuda")
        if asked:
            cand = self.evaluate(str(asked), torch, rel, gpu, os_name, cudnn, driver)
            for message in cand.errors:
                self.error(
                    message, "hardware.driver" if message.startswith("driver ") else "software.cuda"
                )
            for message in cand.warnings:
                self.warn(
                    message, "hardware.driver" if message.startswith("driver ") else "software.cuda"
                )
            return None if cand.errors else cand
        candidates = [
            self.evaluate(c, torch, rel, gpu, os_name, cudnn, driver)
            for c in sorted(rel.cuda, key=kb.vkey, reverse=True)
        ]
        ok = [c for c in candidates if not c.errors]
        best = next((c for c in ok if c.driver_ok), ok[0] if ok else None)
        if best is None:
            reasons = "; ".join(f"cuda {c.cuda}: {c.errors[0]}" for c in candidates)
            self.error(
                f"no CUDA version works for torch {torch} on {gpu.name} ({kb.sm(gpu.cc)})"
                f"{' with driver ' + str(driver) if driver else ''} on {os_name}: {reasons}",
                "software.torch",
            )
            return None
        for message in best.warnings:
            self.warn(
                message, "hardware.driver" if message.startswith("driver ") else "software.cuda"
            )
        return best

    def resolved_profile(
        self,
        name: str,
        accelerator: str,
        gpu: kb.Gpu | None,
        gpus: int,
        os_name: str,
        cuda: str | None,
        cudnn: bool,
        python: str,
        torch: str,
        base: str | None,
        run_gpus: str,
    ) -> dict[str, Any]:
        data = json.loads(json.dumps(self.p.data, default=str))
        data["name"] = name
        hw = data.setdefault("hardware", {})
        hw.update({"accelerator": accelerator, "gpus": gpus})
        if gpu:
            hw["gpu"] = gpu.name
        sw = data.setdefault("software", {})
        sw.update({"os": os_name, "python": python, "torch": torch})
        if cuda:
            sw.update({"cuda": cuda, "cudnn": cudnn})
        if base:
            sw["base_image"] = base
        data.setdefault("run", {})["gpus"] = run_gpus
        data.setdefault("training", {})
        return dict(data)

    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diags)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def validate(
    profile: Profile, options: RenderOptions | None = None
) -> tuple[BuildPlan | None, list[Diagnostic]]:
    """Every diagnostic for the profile, and the plan when there is no error."""
    diags = validate_schema(profile)
    if any(d.severity == "error" for d in diags):
        return None, diags
    resolver = Resolver(profile, options or RenderOptions())
    plan = resolver.resolve()
    diags += resolver.diags
    if any(d.severity == "error" for d in diags):
        return None, diags
    return plan, diags


def resolve(profile: Profile, options: RenderOptions | None = None) -> BuildPlan:
    """The frozen BuildPlan for PROFILE; raises ProfileError listing every error (and warning)."""
    plan, diags = validate(profile, options)
    if plan is None:
        raise ProfileError(diags)
    return plan


def plan_for(
    ref: str, overrides: Sequence[str] = (), options: RenderOptions | None = None
) -> BuildPlan:
    """Load, validate and resolve a profile by path or built-in name."""
    return resolve(load_profile(ref, overrides), options)
