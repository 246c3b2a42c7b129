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

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aibuild import knowledge as kb
from aibuild import vcs
from aibuild.errors import Diagnostic, ProfileError
from aibuild.profile import project as projects
from aibuild.profile import rules, schema
from aibuild.profile.load import Profile, load_profile
from aibuild.profile.plan import DEV_TAG_SUFFIX, BuildPlan, ProjectPlan, RenderOptions
from aibuild.profile.requirements import dev_requirements as dev_requirements
from aibuild.profile.requirements import direct_reference, requirement_name, runtime_conflict
from aibuild.profile.requirements import image_requirements as image_requirements
from aibuild.profile.rules import first_cuda_for as first_cuda_for
from aibuild.profile.rules import toolkit_can_target as toolkit_can_target

TORCH_INDEX = "https://download.pytorch.org/whl"
DEBIAN_CODENAMES = {"debian12": "bookworm", "debian13": "trixie"}
validate_schema = schema.validate_schema  # the schema's check, first step of ``validate``


def _name(requirement: str) -> str:
    return requirement_name(requirement)


_runtime_conflict = runtime_conflict


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Candidate:
    """One CUDA version evaluated for the plan: the rules' findings, and the facts picked
    for it (nvidia/cuda images, minimum driver) when no rule failed."""

    cuda: str
    findings: tuple[rules.Finding, ...]
    full: str | None = None
    builder: str | None = None
    runtime: str | None = None
    min_driver: str | None = None

    @property
    def errors(self) -> list[rules.Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[rules.Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def driver_ok(self) -> bool:
        """The host driver runs this CUDA without compatibility layers (or is not given)."""
        return not any(f.key == "hardware.driver" for f in self.findings)


@dataclass(frozen=True)
class Stack:
    """The hardware and CUDA facts checked for the plan (``Resolver.nvidia_stack`` or
    ``cpu_stack``), from which ``Resolver.assemble`` builds it."""

    gpu: kb.Gpu | None
    gpu_count: int
    cuda: str | None
    full: str | None
    builder: str
    runtime: str
    min_driver: str | None
    arch_list: tuple[str, ...]
    variant: str
    cudnn: bool


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
        self.toolkit = bool(self.value("software.cuda_toolkit"))
        self.source = self.sw.get("cuda_source") or (
            "image" if self.toolkit else schema.default("software.cuda_source")
        )

    def value(self, path: str, nvidia: bool = False) -> Any:
        """The profile's value at ``path``, or the schema's default when absent or null."""
        section, _, key = path.rpartition(".")
        mapping = (self.p.data.get(section) or {}) if section else self.p.data
        given = mapping.get(key)
        return schema.default(path, nvidia) if given is None else given

    def error(self, message: str, key: str) -> None:
        self.diags.append(self.p.diag("error", message, key))

    def warn(self, message: str, key: str) -> None:
        self.diags.append(self.p.diag("warning", message, key))

    def report(self, finding: rules.Finding) -> None:
        self.diags.append(self.p.diag(finding.severity, finding.message, finding.key))

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
        """One candidate CUDA release through every compatibility rule (``rules.RULES``)."""
        facts = rules.CudaFacts(
            cuda, torch, rel, gpu, os_name, cudnn, driver, self.source, self.toolkit
        )
        findings = tuple(rules.check_cuda(facts))
        if any(f.severity == "error" for f in findings):
            return Candidate(cuda, findings)
        images = rules.images_for(facts)
        min_driver, _ = rules.min_driver_for(facts, images)
        if images is None:
            return Candidate(cuda, findings, min_driver=min_driver)
        return Candidate(cuda, findings, images.full, images.builder, images.runtime, min_driver)

    # -- the whole plan --------------------------------------------------------
    def resolve(self) -> BuildPlan | None:
        """The plan: the profile rules, then the stack the CUDA rules admit, then the plan
        assembled from those checked facts (None when a rule found an error)."""
        hw, sw = self.hw, self.sw
        accelerator = hw.get("accelerator") or (
            "nvidia" if hw.get("gpu") else schema.default("hardware.accelerator")
        )
        nvidia = accelerator == "nvidia"
        facts = rules.ProfileFacts(
            hardware=hw,
            software=sw,
            nvidia=nvidia,
            toolkit=self.toolkit,
            python=str(sw.get("python") or self.o.base_python or schema.default("software.python")),
            base_os=self.o.base_os,
            explicit_base=self.o.base_image or sw.get("base_image"),
            run_gpus=str(self.value("run.gpus", nvidia)),
        )
        if not self.apply("profile", facts):
            return None
        os_name = self.o.base_os or self.value("software.os", nvidia)
        stack = self.nvidia_stack(facts, os_name) if nvidia else self.cpu_stack(facts, os_name)
        if stack is None:
            return None
        return self.assemble(facts, stack, accelerator, os_name)

    def apply(self, stage: str, facts: rules.ProfileFacts) -> bool:
        """Report STAGE's findings; False when a stopping rule ended the stage."""
        findings, stopped = rules.apply(stage, facts)
        for finding in findings:
            self.report(finding)
        return not stopped

    def nvidia_stack(self, facts: rules.ProfileFacts, os_name: str) -> Stack | None:
        """The GPU, and the CUDA release that every CUDA rule admits for it, with its
        images."""
        torch, rel = _picked(facts)
        gpu = facts.gpu
        assert gpu is not None  # the GPU rules stop first
        gpu_count = self.value("hardware.gpus", nvidia=True)
        cudnn = bool(self.value("software.cudnn"))
        driver = self.hw.get("driver")
        chosen = self.choose_cuda(torch, rel, gpu, os_name, cudnn, driver)
        if chosen is None:
            return None
        builder, runtime = chosen.builder, chosen.runtime
        if facts.explicit_base:
            builder = runtime = facts.explicit_base
        elif self.source == "wheels":
            builder = runtime = self.slim_base(facts.python, os_name)
        assert builder is not None and runtime is not None  # images_for found both
        variant = "cu" + chosen.cuda.replace(".", "")
        return Stack(
            gpu,
            int(gpu_count),
            chosen.cuda,
            chosen.full,
            builder,
            runtime,
            chosen.min_driver,
            (gpu.cc,),
            variant,
            cudnn,
        )

    def cpu_stack(self, facts: rules.ProfileFacts, os_name: str) -> Stack:
        """A cpu profile: no CUDA; the slim OS base (or the given one)."""
        gpu_count = self.value("hardware.gpus", nvidia=False)
        base = facts.explicit_base or self.slim_base(facts.python, os_name)
        return Stack(None, int(gpu_count), None, None, base, base, None, (), "cpu", False)

    def assemble(
        self, facts: rules.ProfileFacts, stack: Stack, accelerator: str, os_name: str
    ) -> BuildPlan | None:
        """The frozen plan from the checked facts: the project, run defaults, the resolved
        profile and its hash."""
        torch, rel = _picked(facts)
        nvidia, python, explicit_base = facts.nvidia, facts.python, facts.explicit_base
        project = self.resolve_project(torch)
        self.apply("plan", facts)
        if self.has_errors():
            return None
        name = self.p.name
        dev_jupyter = bool(self.value("dev.jupyter"))
        image_tag = self.image_tag(name, torch, stack.variant, dev_jupyter)
        if image_tag is None:
            return None
        resolved = self.resolved_profile(
            name,
            accelerator,
            stack,
            os_name,
            python,
            torch,
            stack.builder if explicit_base else None,
            facts.run_gpus,
        )
        profile_yaml, profile_hash = _identity(resolved, project)
        return BuildPlan(
            profile_name=name,
            description=str(self.p.data.get("description") or ""),
            profile_hash=profile_hash,
            profile_yaml=profile_yaml,
            accelerator=accelerator,
            **self.stack_fields(stack, nvidia, explicit_base),
            os=os_name,
            os_family="debian" if os_name.startswith("debian") else "ubuntu",
            python=python,
            python_install=self.python_install(
                python, os_name, stack.builder, explicit_base is not None, nvidia
            ),
            torch=torch,
            torch_variant=stack.variant,
            torch_index_url=(
                None if nvidia and rel.pypi_cuda == stack.cuda else f"{TORCH_INDEX}/{stack.variant}"
            ),  # PyPI's own torch is that CUDA build: PyPI serves it
            **self.software_fields(),
            **self.run_fields(facts),
            image_name=self.image_cfg.get("name") or schema.default("image.name"),
            image_tag=image_tag,
            image_compression=str(self.image_cfg.get("compression") or "gzip"),
            warnings=tuple(d.format() for d in self.diags if d.severity == "warning"),
            project=project,
            dev_jupyter=dev_jupyter,
        )

    def stack_fields(self, stack: Stack, nvidia: bool, explicit_base: str | None) -> dict[str, Any]:
        """The plan's hardware and CUDA fields, from the checked stack."""
        driver = self.hw.get("driver")
        return {
            "gpu": stack.gpu.name if stack.gpu else None,
            "gpu_count": stack.gpu_count,
            "compute_capability": stack.gpu.cc if stack.gpu else None,
            "arch_list": stack.arch_list,
            "driver": str(driver) if driver else None,
            "min_driver": stack.min_driver,
            "cuda": stack.cuda,
            "cuda_full": stack.full,
            "cudnn": stack.cudnn,
            "cuda_source": self.source if nvidia else None,
            "cuda_toolkit": self.toolkit and nvidia,
            "cuda_stack": self.describe_stack(nvidia, stack, explicit_base),
            "require_cuda": (f"cuda>={stack.cuda}" if nvidia and self.source == "wheels" else None),
            "base_image": stack.builder,
            "runtime_image": stack.runtime,
        }

    def software_fields(self) -> dict[str, Any]:
        """The plan's packages, environment and training settings, sorted."""
        sw = self.sw
        training = self.p.data.get("training") or {}
        return {
            "compile_deps": bool(training.get("compile")),
            "pip": tuple(sorted({str(Requirement(r)) for r in sw.get("pip") or []}, key=str.lower)),
            "apt": tuple(sorted(set(sw.get("apt") or []))),
            "env": tuple(sorted((k, _env_value(v)) for k, v in (sw.get("env") or {}).items())),
            "training": tuple(sorted(training.items())),
        }

    def run_fields(self, facts: rules.ProfileFacts) -> dict[str, Any]:
        """The plan's run defaults: GPUs, shared memory and IPC."""
        shm_size = self.run_cfg.get("shm_size") or schema.default("run.shm_size", facts.nvidia)
        return {
            "run_gpus": facts.run_gpus,
            "run_shm_size": str(shm_size),
            "run_ipc": str(self.run_cfg.get("ipc") or schema.default("run.ipc")),
        }

    def image_tag(self, name: str, torch: str, variant: str, dev_jupyter: bool) -> str | None:
        """``image.tag``, or the scheme's ``<profile>-torch<version>-<variant>``; None (an
        error) when the dev image's tag would pass Docker's 128 characters."""
        image_tag = str(self.image_cfg.get("tag") or f"{name}-torch{torch}-{variant}")
        if dev_jupyter and len(image_tag) + len(DEV_TAG_SUFFIX) > 128:
            self.error(
                f"the dev image's tag '{image_tag}{DEV_TAG_SUFFIX}' is longer than 128 "
                "characters: set a shorter image.tag",
                "dev.jupyter",
            )
            return None
        return image_tag

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
        outside = projects.outside_profile_folder(root, where, "project.path")
        if outside:
            self.error(outside, "project.path")
            return None
        requirements: list[str] = []
        requirements_file = None
        if section.get("requirements"):
            requirements_file = root / str(section["requirements"])
            req_where = self.p.pos("project.requirements").file
            outside = projects.outside_profile_folder(
                requirements_file, req_where, "project.requirements"
            )
            if outside:
                self.error(outside, "project.requirements")
                return None
            try:
                listed = projects.read_requirements(requirements_file)
            except projects.RequirementsError as exc:
                self.error(str(exc), "project.requirements")
                return None
            allowed = (self.p.data.get("software") or {}).get("allow_direct_references") is True
            for item in listed:
                problem = self._project_requirement(Requirement(item), torch) or (
                    direct_reference(Requirement(item), allowed)
                )
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
            workdir=str(section.get("workdir") or schema.default("project.workdir")).rstrip("/")
            or "/",
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

    def describe_stack(self, nvidia: bool, stack: Stack, explicit_base: str | None) -> str:
        """Where the image's CUDA comes from, in one line (``check`` and the header)."""
        cuda, full, builder, runtime = stack.cuda, stack.full, stack.builder, stack.runtime
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
            for finding in [*cand.errors, *cand.warnings]:
                self.report(finding)
            return None if cand.errors else cand
        candidates = [
            self.evaluate(c, torch, rel, gpu, os_name, cudnn, driver)
            for c in sorted(rel.cuda, key=kb.vkey, reverse=True)
        ]
        ok = [c for c in candidates if not c.errors]
        best = next((c for c in ok if c.driver_ok), ok[0] if ok else None)
        if best is None:
            reasons = "; ".join(f"cuda {c.cuda}: {c.errors[0].message}" for c in candidates)
            self.error(
                f"no CUDA version works for torch {torch} on {gpu.name} ({kb.sm(gpu.cc)})"
                f"{' with driver ' + str(driver) if driver else ''} on {os_name}: {reasons}",
                "software.torch",
            )
            return None
        for finding in best.warnings:
            self.report(finding)
        return best

    def resolved_profile(
        self,
        name: str,
        accelerator: str,
        stack: Stack,
        os_name: str,
        python: str,
        torch: str,
        base: str | None,
        run_gpus: str,
    ) -> dict[str, Any]:
        """The profile with what resolution picked filled in (the image's profile.yaml)."""
        gpu, gpus, cuda, cudnn = stack.gpu, stack.gpu_count, stack.cuda, stack.cudnn
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


def _picked(facts: rules.ProfileFacts) -> tuple[str, kb.TorchRelease]:
    """The torch release the profile rules admitted (``torch_known`` stops otherwise)."""
    picked = facts.torch
    assert not isinstance(picked, str)
    return picked


def _identity(resolved: dict[str, Any], project: ProjectPlan | None) -> tuple[str, str]:
    """The resolved profile as YAML (the image's profile.yaml) and its hash. The project's
    requirements are part of what the image is (its code is not: a code edit must not
    change the plan, nor any layer before the code's)."""
    profile_yaml = yaml.safe_dump(
        resolved, sort_keys=True, default_flow_style=False, allow_unicode=True
    )
    hashed = dict(resolved)
    if project is not None:
        hashed["_requirements"] = project.requirements
    profile_hash = hashlib.sha256(
        json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    return profile_yaml, profile_hash


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
