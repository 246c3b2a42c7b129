"""The compatibility rules, one function each (hpccm's habit: one building block, one test).

A rule reads facts and returns its findings: errors and warnings, each at the key the
user has to change. The rules run in three stages, each on its own facts:

- ``profile``: the profile as given (``ProfileFacts``): the torch release, Python, the
  accelerator's keys, the CUDA source and the GPU;
- ``cuda``: one candidate CUDA release for the profile (``CudaFacts``); the resolver
  runs them for every candidate and picks the newest that passes;
- ``plan``: the run defaults picked for the plan (``ProfileFacts`` again).

``RULES`` lists every rule with its one-line summary, in the order the resolver applies
them; ``rules_markdown()`` renders that table for docs/compatibility.md.

Facts marked uncertain in the knowledge base decide at most a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from aibuild import knowledge as kb
from aibuild.errors import did_you_mean
from aibuild.profile import schema


@dataclass(frozen=True)
class Finding:
    """One result of a rule: an error or a warning, at a profile key."""

    severity: str  # "error" | "warning"
    message: str
    key: str = "software.cuda"


@dataclass(frozen=True)
class ProfileFacts:
    """What the profile rules read: the profile's sections as given, and what the resolver
    settled before any rule (the accelerator, the toolkit, Python, the build options)."""

    hardware: Mapping[str, Any]
    software: Mapping[str, Any]
    nvidia: bool
    toolkit: bool
    python: str
    base_os: str | None = None  # --base-os: the OS of the base image given to the build
    explicit_base: str | None = None  # software.base_image or --base-image
    run_gpus: str = "none"

    @property
    def torch_spec(self) -> str:
        given = self.software.get("torch")
        return str(schema.default("software.torch") if given is None else given)

    @cached_property
    def torch(self) -> tuple[str, kb.TorchRelease] | str:
        """The torch release picked for software.torch, or why there is none."""
        return pick_torch(self.torch_spec)

    @cached_property
    def gpu(self) -> kb.Gpu | None:
        given = self.hardware.get("gpu")
        return kb.find_gpu(str(given)) if given else None


@dataclass(frozen=True)
class CudaFacts:
    """What the CUDA rules read about one candidate CUDA release for the profile."""

    cuda: str
    torch: str
    rel: kb.TorchRelease
    gpu: kb.Gpu
    os_name: str
    cudnn: bool
    driver: str | None
    source: str  # "wheels" | "image"
    toolkit: bool

    @property
    def gpu_desc(self) -> str:
        return f"{kb.sm(self.gpu.cc)} ({self.gpu.name}, compute capability {self.gpu.cc})"


@dataclass(frozen=True)
class CudaImages:
    """The nvidia/cuda images picked for the image source: the full CUDA version and the
    builder and runtime tags."""

    full: str
    builder: str
    runtime: str


# --------------------------------------------------------------------------- knowledge


def version_lt(a: str, b: str) -> bool:
    return kb.vkey(a) < kb.vkey(b)


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


def torch_fix(cc: str) -> str:
    pairs = torch_cuda_pairs_for(cc)
    if not pairs:
        return "a GPU that PyTorch's official wheels support"
    minor, cuda = pairs[0]
    return f"torch >= {minor} with cuda {cuda}"


def torch_for_cuda(cuda: str) -> str:
    minors = [m for m, r in kb.torch_releases().items() if cuda in r.cuda]
    if not minors:
        return f"no torch release has CUDA {cuda} wheels"
    ordered = sorted(minors, key=kb.vkey)
    return (
        f"torch {ordered[0]} to {ordered[-1]} for cuda {cuda}"
        if len(ordered) > 1
        else f"torch {ordered[0]}"
    )


def image_flavours(cudnn: bool, toolkit: bool) -> tuple[str, str]:
    """(builder, runtime) nvidia/cuda flavours for the image source. With the toolkit:
    devel to compile (cuDNN headers when asked), and base to run (cudart and the
    forward-compatibility libraries; torch brings the rest). Without: one stage on
    base, or on runtime with cuDNN for a consumer other than torch that needs it."""
    if toolkit:
        return ("cudnn-devel" if cudnn else "devel", "base")
    one = "cudnn-runtime" if cudnn else "base"
    return (one, one)


def pick_images(cuda: str, os_name: str, flavours: tuple[str, str]) -> CudaImages | None:
    """The newest update of CUDA X.Y that has both flavours for this OS (NVIDIA's cuDNN
    tag names vary)."""
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
    return CudaImages(
        full, f"nvidia/cuda:{by_full[full][builder]}", f"nvidia/cuda:{by_full[full][runtime]}"
    )


def images_for(f: CudaFacts) -> CudaImages | None:
    """The nvidia/cuda images for the image source (None for the wheels source, or when
    there are none)."""
    if f.source != "image":
        return None
    return pick_images(f.cuda, f.os_name, image_flavours(f.cudnn, f.toolkit))


def min_driver_for(f: CudaFacts, images: CudaImages | None) -> tuple[str | None, str | None]:
    """(minimum driver, note when unknown) of the candidate's CUDA stack. torch's wheels
    carry the CUDA runtime of that minor release (its update is the wheels' business):
    the minor's first release sets the driver it wants."""
    return kb.driver_for(images.full if images else f"{f.cuda}.0")


def pick_torch(spec: str) -> tuple[str, kb.TorchRelease] | str:
    """The torch version SPEC names and its release, or why there is none. A specifier
    picks the newest verified release it admits; a release the knowledge base does not
    know as released is taken only when nothing else matches."""
    known = sorted(kb.TORCH_PATCHES.values(), key=Version)
    if spec[:1] in "<>=!~":
        admitted = [v for v in known if Version(v) in SpecifierSet(spec)]
        verified = [v for v in admitted if not kb.torch_unverified(kb.torch_minor(v))]
        matches = verified or admitted
        if not matches:
            return f"no known torch release matches '{spec}'; known: {', '.join(known)}"
        version = matches[-1]
    elif spec.count(".") == 1:
        version = kb.TORCH_PATCHES.get(spec, "")
        if not version:
            return f"torch {spec} is not in the knowledge base; known: {', '.join(known)}"
    else:
        version = str(Version(spec))
        if Version(version).local:
            return (
                f"write torch without a local suffix ('{spec}'): the CUDA variant comes from "
                "software.cuda"
            )
    minor = kb.torch_minor(version)
    rel = kb.torch_releases().get(minor)
    if rel is None:
        return (
            f"torch {minor} is not in the knowledge base; known releases: "
            f"{', '.join(sorted(kb.torch_releases(), key=kb.vkey))}"
        )
    return version, rel


def _on_cpu(key: str) -> Finding:
    return Finding(
        "error",
        f"{key} is set but the accelerator is cpu; remove it or set hardware.accelerator: nvidia",
        key,
    )


# --------------------------------------------------------------------------- the profile rules


def os_matches_base(f: ProfileFacts) -> list[Finding]:
    """With a given base image's OS (--base-os), software.os names the same OS: a warning
    (the image is built for the base's OS) when it does not."""
    given = f.software.get("os")
    if not f.base_os or not given or given == f.base_os:
        return []
    message = f"the base image is {f.base_os}, not {given}: building for {f.base_os}"
    return [Finding("warning", message, "software.os")]


def torch_known(f: ProfileFacts) -> list[Finding]:
    """software.torch names a release in the knowledge base: an exact version without a
    local suffix, X.Y, or a specifier that admits a known release (the newest verified
    one is picked). A warning for a release not verified as released."""
    picked = f.torch
    if isinstance(picked, str):
        return [Finding("error", picked, "software.torch")]
    minor, rel = kb.torch_minor(picked[0]), picked[1]
    if not kb.torch_unverified(minor):
        return []
    message = f"torch {minor} is not verified as released (knowledge base: {rel.notes})"
    return [Finding("warning", message, "software.torch")]


def python_in_torch_range(f: ProfileFacts) -> list[Finding]:
    """software.python is within the torch release's Python range: an error below the
    minimum; above the maximum an error, or a warning for a release known from secondary
    sources (its range may have grown)."""
    assert not isinstance(f.torch, str)  # torch_known stops first
    (torch, rel), python = f.torch, f.python
    low, high = kb.vkey(rel.python_min), kb.vkey(rel.python_max)
    if low <= kb.vkey(python) <= high:
        return []
    fits = [
        m
        for m, r in kb.torch_releases().items()
        if kb.vkey(r.python_min) <= kb.vkey(python) <= kb.vkey(r.python_max)
    ]
    hint = ""
    if fits:
        lo, hi = min(fits, key=kb.vkey), max(fits, key=kb.vkey)
        hint = f", or torch {lo} to {hi} for Python {python}" if lo != hi else f", or torch {lo}"
    nearest = rel.python_min if kb.vkey(python) < low else rel.python_max
    message = (
        f"torch {torch} supports Python {rel.python_min} to {rel.python_max}, not {python}; "
        f"use python {nearest}{hint}"
    )
    warning = rel.uncertain and kb.vkey(python) > high
    return [Finding("warning" if warning else "error", message, "software.python")]


def cpu_has_no_gpu_keys(f: ProfileFacts) -> list[Finding]:
    """A cpu profile sets none of software.cuda_source, software.cuda_toolkit,
    hardware.gpu, hardware.driver and software.cuda: an error naming the key (it gets
    CPU wheels from download.pytorch.org/whl/cpu and no CUDA base)."""
    if f.nvidia:
        return []
    software = [k for k in ("cuda_source", "cuda_toolkit") if f.software.get(k)]
    hardware = [k for k in ("gpu", "driver") if f.hardware.get(k)]
    cuda = ["cuda"] if f.software.get("cuda") else []
    return [
        *(_on_cpu(f"software.{k}") for k in software),
        *(_on_cpu(f"hardware.{k}") for k in hardware),
        *(_on_cpu(f"software.{k}") for k in cuda),
    ]


def cuda_source_agrees(f: ProfileFacts) -> list[Finding]:
    """software.cuda_toolkit needs cuda_source: image (nvcc is in nvidia/cuda's devel
    images), and neither cuda_source: image nor cuda_toolkit goes with a given base image
    (software.base_image or --base-image): an error naming the fix."""
    if not f.nvidia:
        return []
    asked = f.software.get("cuda_source")
    found = []
    if f.toolkit and asked == "wheels":
        message = (
            "software.cuda_toolkit needs nvcc, which only an nvidia/cuda devel stage has: "
            "set software.cuda_source: image (or leave cuda_source out)"
        )
        found.append(Finding("error", message, "software.cuda_source"))
    if f.explicit_base and asked == "image":
        message = (
            "software.cuda_source: image picks an nvidia/cuda base, but a base image is "
            "given (software.base_image or --base-image): keep one of them"
        )
        found.append(Finding("error", message, "software.cuda_source"))
    if f.explicit_base and f.toolkit:
        message = (
            "software.cuda_toolkit builds on an nvidia/cuda devel image, but a base image "
            "is given (software.base_image or --base-image): keep one of them"
        )
        found.append(Finding("error", message, "software.cuda_toolkit"))
    return found


def gpu_known(f: ProfileFacts) -> list[Finding]:
    """An nvidia profile names its GPU (hardware.gpu), and the knowledge base knows its
    compute capability: a warning when that rests on secondary sources."""
    if not f.nvidia:
        return []
    given = f.hardware.get("gpu")
    if not given:
        message = "hardware.gpu is required when the accelerator is nvidia (e.g. gpu: A100)"
        return [Finding("error", message, "hardware")]
    gpu = f.gpu
    if gpu is None:
        hint = did_you_mean(str(given).lower().replace(" ", ""), kb.gpu_names(), listing="known")
        return [Finding("error", f"unknown GPU '{given}'{hint}", "hardware.gpu")]
    if not gpu.uncertain:
        return []
    message = f"{gpu.name}'s compute capability {gpu.cc} rests on secondary sources ({gpu.sources})"
    return [Finding("warning", message, "hardware.gpu")]


def gpu_count(f: ProfileFacts) -> list[Finding]:
    """An nvidia profile has at least one GPU per node (hardware.gpus)."""
    count = f.hardware.get("gpus")
    if not f.nvidia or count is None or count >= 1:
        return []
    return [Finding("error", "an nvidia profile needs at least one GPU (gpus: 1)", "hardware.gpus")]


def run_gpus_on_cpu(f: ProfileFacts) -> list[Finding]:
    """A cpu image runs without GPUs: a warning when run.gpus asks for some."""
    if f.nvidia or f.run_gpus == "none":
        return []
    message = f"run.gpus is {f.run_gpus} but the accelerator is cpu; the image has no CUDA"
    return [Finding("warning", message, "run.gpus")]


# --------------------------------------------------------------------------- the CUDA rules


def cuda_known(f: CudaFacts) -> list[Finding]:
    """software.cuda names a CUDA release the knowledge base knows: an error listing the
    known ones."""
    if kb.targets_for(f.cuda) is not None:
        return []
    known = ", ".join(sorted(kb.cuda_targets(), key=kb.vkey))
    return [Finding("error", f"CUDA {f.cuda} is not in the knowledge base; known: {known}")]


def toolkit_targets_gpu(f: CudaFacts) -> list[Finding]:
    """The CUDA toolkit can target the GPU's compute capability, neither too new a GPU
    for it (CUDA 12.4 cannot target sm_100) nor one it dropped (CUDA 13 cannot target
    sm_50 to sm_72): an error naming a CUDA that can."""
    cc, minor, rel = f.gpu.cc, f.rel.minor, f.rel
    if toolkit_can_target(f.cuda, cc):
        return []
    first = first_cuda_for(cc)
    with_wheels = [
        c
        for c in rel.cuda
        if toolkit_can_target(c, cc)
        and (a := kb.wheel_archs().get((minor, c))) is not None
        and kb.wheel_covers(cc, a)
    ]
    if first and version_lt(f.cuda, first):
        fix = f"CUDA >= {first} can; use " + (
            f"cuda {with_wheels[-1]} (torch {minor} has wheels for {', '.join(rel.cuda)})"
            if with_wheels
            else torch_fix(cc)
        )
    else:
        newer_dropped = f"CUDA {f.cuda.split('.')[0]} dropped it"
        fix = f"{newer_dropped}; use " + (
            f"cuda {with_wheels[-1]} (torch {minor} has {with_wheels[-1]} wheels with {kb.sm(cc)})"
            if with_wheels
            else "a CUDA 12.x stack: " + torch_fix(cc)
        )
    return [Finding("error", f"CUDA {f.cuda} cannot target {f.gpu_desc}: {fix}")]


def wheel_exists(f: CudaFacts) -> list[Finding]:
    """The torch release has wheels for the CUDA release: an error naming the ones it has
    (a warning where the release rests on secondary sources and the CUDA is inside its
    recorded range)."""
    rel = f.rel
    if f.cuda in rel.cuda:
        return []
    message = (
        f"torch {f.torch} has no wheels for CUDA {f.cuda}; it has {', '.join(rel.cuda)}"
        f" (use cuda {rel.cuda[-1]}, or {torch_for_cuda(f.cuda)})"
    )
    in_range = kb.vkey(rel.cuda[0]) <= kb.vkey(f.cuda) <= kb.vkey(rel.cuda[-1])
    return [Finding("warning" if rel.uncertain and in_range else "error", message)]


def arch_coverage(f: CudaFacts) -> list[Finding]:
    """The torch+CUDA wheels' GPU architectures run on the GPU: SASS of the same major and
    a lower-or-equal minor, an exact arch-specific target (9.0a), or PTX of a
    lower-or-equal capability. An error naming a torch that has one (a warning when the
    arch list is uncertain or not recorded)."""
    if f.cuda not in f.rel.cuda:
        return []  # no wheels: wheel_exists says so
    minor, cc = f.rel.minor, f.gpu.cc
    variant = f"cu{f.cuda.replace('.', '')}"
    arch = kb.wheel_archs().get((minor, f.cuda))
    if arch is None:
        return [
            Finding(
                "warning",
                f"the GPU architectures in torch {minor} {variant} wheels are "
                f"not recorded; {kb.sm(cc)} is assumed to be included",
            )
        ]
    if kb.wheel_covers(cc, arch):
        return []
    built = ", ".join(kb.sm(a.rstrip("a")) + ("a" if a.endswith("a") else "") for a in arch.sass)
    ptx = f" + PTX compute_{arch.ptx[0].replace('.', '')}" if arch.ptx else ""
    message = (
        f"torch {minor} {variant} wheels are built for {built}{ptx}, which do "
        f"not run on {f.gpu_desc}; use {torch_fix(cc)}"
    )
    return [Finding("warning" if arch.uncertain else "error", message)]


def base_image_flavour(f: CudaFacts) -> list[Finding]:
    """With cuda_source: image, an nvidia/cuda image of the CUDA release exists for the OS
    in the flavours needed (base, cudnn-runtime, devel; the cuDNN tags are cudnn8 up to
    12.2.2, cudnn9 at 12.3.2, cudnn from 12.4.1): an error naming the OSes that have
    one."""
    if f.source != "image" or images_for(f) is not None:
        return []
    flavours = image_flavours(f.cudnn, f.toolkit)
    oses = sorted({i.os for i in kb.cuda_images() if i.cuda == f.cuda})
    want = " with cuDNN" if f.cudnn and f.toolkit else ""
    fix = (
        f"use os {' or '.join(o for o in oses if o in schema.OS_CHOICES)}"
        if oses
        else "use another cuda"
    )
    return [
        Finding(
            "error",
            f"there is no nvidia/cuda {f.cuda} {'/'.join(flavours)} image{want} for "
            f"{f.os_name}: {fix}",
        )
    ]


def driver_floor(f: CudaFacts) -> list[Finding]:
    """The host driver (hardware.driver) runs the CUDA stack: a warning between the
    minor-version-compatibility floor (525.60.13 for 12.x, 580.65.06 for 13.x) and the
    release's minimum; below the floor an error naming the fix, or, with cuda_source:
    image on a datacenter GPU, a warning (forward compatibility through nvidia/cuda's
    cuda-compat libraries)."""
    if not f.driver:
        return []
    driver, cuda, gpu = f.driver, f.cuda, f.gpu
    images = images_for(f)
    min_driver, note = min_driver_for(f, images)
    floor = kb.compat_floor(cuda)
    stack = f"CUDA {images.full}" if images else f"CUDA {cuda} (torch's wheels)"
    if floor and version_lt(driver, floor) and f.source == "image":
        if not kb.forward_compatible(gpu):
            message = (
                f"driver {driver} is too old for CUDA {cuda} (its "
                f"minor-version-compatibility floor is {floor}), and forward "
                f"compatibility does not run on {gpu.name} (datacenter GPUs only): "
                "upgrade the driver or use an older cuda"
            )
            return [Finding("error", message, "hardware.driver")]
        runtime = images.runtime if images else None
        message = (
            f"driver {driver} is below CUDA {cuda}'s floor {floor}: it runs "
            f"through forward compatibility (the cuda-compat libraries in "
            f"{runtime}; datacenter GPUs only)"
        )
        return [Finding("warning", message, "hardware.driver")]
    if floor and version_lt(driver, floor):
        hint = (
            ""
            if not kb.forward_compatible(gpu)
            else "; or, for forward compatibility on this datacenter GPU, "
            "software.cuda_source: image (nvidia/cuda carries the cuda-compat "
            "libraries)"
        )
        message = (
            f"driver {driver} is too old for CUDA {cuda}: its minor-version-compatibility "
            f"floor is {floor} ({stack} wants >= {min_driver or floor}); upgrade the driver "
            f"or use an older cuda{hint}"
        )
        return [Finding("error", message, "hardware.driver")]
    if min_driver and version_lt(driver, min_driver):
        message = (
            f"driver {driver} is below {stack}'s minimum {min_driver}: it runs through "
            f"minor-version compatibility (no PTX JIT); upgrade to >= {min_driver} for full "
            "support"
        )
        return [Finding("warning", message, "hardware.driver")]
    if min_driver is None:
        return [Finding("warning", f"cannot check driver {driver}: {note}")]
    return []


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Any], list[Finding]]  # takes the facts of its stage
    stage: str  # "profile" | "cuda" | "plan"
    stops: bool = False  # an error from it ends the stage (and, for cuda, the candidate)

    @property
    def doc(self) -> str:
        return " ".join((self.check.__doc__ or "").split())


# In order: a rule after one that stops reads facts that one established.
RULES: tuple[Rule, ...] = (
    Rule("base OS", os_matches_base, "profile"),
    Rule("torch known", torch_known, "profile", stops=True),
    Rule("Python in torch's range", python_in_torch_range, "profile"),
    Rule("cpu has no GPU keys", cpu_has_no_gpu_keys, "profile"),
    Rule("CUDA source agrees", cuda_source_agrees, "profile"),
    Rule("GPU known", gpu_known, "profile", stops=True),
    Rule("GPU count", gpu_count, "profile"),
    Rule("CUDA known", cuda_known, "cuda", stops=True),
    Rule("toolkit targets the GPU", toolkit_targets_gpu, "cuda", stops=True),
    Rule("a wheel exists", wheel_exists, "cuda"),
    Rule("arch coverage", arch_coverage, "cuda"),
    Rule("base-image flavour", base_image_flavour, "cuda", stops=True),
    Rule("driver floor", driver_floor, "cuda"),
    Rule("run.gpus on cpu", run_gpus_on_cpu, "plan"),
)
STAGES = ("profile", "cuda", "plan")


def apply(stage: str, facts: ProfileFacts | CudaFacts) -> tuple[list[Finding], bool]:
    """The findings of STAGE's rules, in order, and whether a stopping rule's error ended
    the stage."""
    findings: list[Finding] = []
    for rule in RULES:
        if rule.stage != stage:
            continue
        found = rule.check(facts)
        findings += found
        if rule.stops and any(x.severity == "error" for x in found):
            return findings, True
    return findings, False


def check_cuda(facts: CudaFacts) -> list[Finding]:
    """Every CUDA rule's findings for one candidate, stopping after a stopping rule's error."""
    return apply("cuda", facts)[0]


def rules_markdown() -> str:
    """The compatibility rules as a markdown table (name, stage, what it checks), for
    docs/compatibility.md."""
    lines = ["| rule | stage | checks |", "| --- | --- | --- |"]
    lines += [f"| {rule.name} | {rule.stage} | {rule.doc} |" for rule in RULES]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(rules_markdown())
