"""The compatibility rules, one function each (hpccm's habit: one building block, one test).

A CUDA rule reads the facts about one candidate CUDA release for the profile
(``CudaFacts``) and returns its findings: errors and warnings, each at the key the
user has to change. ``RULES`` lists every rule with its one-line summary, in the order
the resolver applies them; ``rules_markdown()`` renders that table for the docs.

Facts marked uncertain in the knowledge base decide at most a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aibuild import knowledge as kb
from aibuild.profile import schema


@dataclass(frozen=True)
class Finding:
    """One result of a rule: an error or a warning, at a profile key."""

    severity: str  # "error" | "warning"
    message: str
    key: str = "software.cuda"


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


# --------------------------------------------------------------------------- the rules


def cuda_known(f: CudaFacts) -> list[Finding]:
    """The CUDA release is in the knowledge base."""
    if kb.targets_for(f.cuda) is not None:
        return []
    known = ", ".join(sorted(kb.cuda_targets(), key=kb.vkey))
    return [Finding("error", f"CUDA {f.cuda} is not in the knowledge base; known: {known}")]


def toolkit_targets_gpu(f: CudaFacts) -> list[Finding]:
    """The CUDA toolkit can target the GPU's compute capability (neither too new a GPU
    for it nor one it dropped)."""
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
    """The torch release has wheels for the CUDA release (a warning for a release known
    only from secondary sources, within its recorded CUDA range)."""
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
    """The torch wheels' GPU architectures (SASS, or PTX that JITs) run on the GPU."""
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
    """With cuda_source: image, an nvidia/cuda image of the CUDA release exists in the
    flavours needed (base, cudnn-runtime, devel) for the OS."""
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
    """The host driver (hardware.driver) runs the CUDA stack: at least its minimum, or
    above the minor-version-compatibility floor (or forward compatibility on a datacenter
    GPU with nvidia/cuda's cuda-compat)."""
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


CudaRule = Callable[[CudaFacts], list[Finding]]


@dataclass(frozen=True)
class Rule:
    name: str
    check: CudaRule
    stops: bool  # an error from it ends the evaluation of the candidate

    @property
    def doc(self) -> str:
        return " ".join((self.check.__doc__ or "").split())


# In order: a rule after one that stops reads facts that one established.
RULES: tuple[Rule, ...] = (
    Rule("CUDA known", cuda_known, stops=True),
    Rule("toolkit targets the GPU", toolkit_targets_gpu, stops=True),
    Rule("a wheel exists", wheel_exists, stops=False),
    Rule("arch coverage", arch_coverage, stops=False),
    Rule("base-image flavour", base_image_flavour, stops=True),
    Rule("driver floor", driver_floor, stops=False),
)


def check_cuda(f: CudaFacts) -> list[Finding]:
    """Every rule's findings for one candidate, stopping after a stopping rule's error."""
    findings: list[Finding] = []
    for rule in RULES:
        found = rule.check(f)
        findings += found
        if rule.stops and any(x.severity == "error" for x in found):
            break
    return findings


def rules_markdown() -> str:
    """The compatibility rules as a markdown table (name, what it checks), for the docs."""
    lines = ["| rule | checks |", "| --- | --- |"]
    lines += [f"| {rule.name} | {rule.doc} |" for rule in RULES]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(rules_markdown())
