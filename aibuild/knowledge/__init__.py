"""The compatibility knowledge base: facts as data, with their sources.

The CSV files in ``data/`` are copies of ``shared/reference`` (see data/SOURCES.md
for the source codes in each row's ``sources`` column). A new torch or CUDA
release is a data edit; this module only parses the tables into typed records.

Rows marked ``?`` in their ``uncertain`` column rest on secondary sources: the
validator lets such a fact decide at most a warning.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

DATA = Path(__file__).resolve().parent / "data"


def _rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as fh:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]


def vkey(text: str) -> Version:
    """A sortable version for "12.4", "550.54.14", "2.5.1"."""
    return Version(text)


def cc_key(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def sm(cc: str) -> str:
    """'10.0' -> 'sm_100'."""
    major, minor = cc_key(cc)
    return f"sm_{major}{minor}"


@dataclass(frozen=True)
class Gpu:
    name: str  # canonical, as in the table ("NVIDIA A100")
    cc: str  # "8.0"
    architecture: str
    uncertain: bool
    sources: str


@dataclass(frozen=True)
class TorchRelease:
    minor: str  # "2.5"
    python_min: str
    python_max: str
    cuda: tuple[str, ...]  # CUDA variants with wheels, e.g. ("11.8", "12.1", "12.4")
    stable_cuda: tuple[str, ...]
    pypi_cuda: str | None  # the CUDA of the release's wheel on PyPI itself (Linux x86_64)
    uncertain: bool
    notes: str
    sources: str


@dataclass(frozen=True)
class WheelArch:
    """Architectures compiled into the official torch wheels of one (release, CUDA) pair."""

    sass: tuple[str, ...]  # ("7.5", "8.0", ..., "9.0a")
    ptx: tuple[str, ...]  # ("12.0",)
    uncertain: bool
    sources: str


def arch_runs_on(entry: str, cc: str) -> bool:
    """Whether code compiled for one arch entry runs on a GPU of compute capability ``cc``.

    The one coverage rule, used for torch wheels (``wheel_covers``), for a plan's
    TORCH_CUDA_ARCH_LIST (``arch_list_covers``, e.g. by ``doctor``) and everywhere else:

    - ``"X.Y"`` (SASS, cubin) runs on X.Z for Z >= Y: binary compatibility holds within
      one major version, never across (CUDA C Programming Guide, "Binary Compatibility");
    - ``"X.Ya"`` (arch-specific features, e.g. ``9.0a``) runs on exactly X.Y;
    - ``"X.Yf"`` (family-specific, CUDA 12.9+) runs on the same major version, X.Z for Z >= Y;
    - ``"X.Y+PTX"`` also carries PTX, which the driver JIT-compiles for any GPU of
      capability >= X.Y.
    """
    text = entry.strip()
    ptx = text.endswith("+PTX")
    base = text.removesuffix("+PTX")
    suffix = base[-1] if base[-1:] in ("a", "f") else ""
    try:
        target = cc_key(base.removesuffix(suffix))
        gpu = cc_key(cc)
    except (ValueError, IndexError):
        return False
    if ptx and gpu >= target:
        return True
    if suffix == "a":
        return gpu == target
    return gpu[0] == target[0] and gpu[1] >= target[1]


def arch_list_covers(arch_list: Sequence[str], cc: str) -> bool:
    """Whether a TORCH_CUDA_ARCH_LIST (``("8.0", "9.0a", "12.0+PTX")``) runs on ``cc``."""
    return any(arch_runs_on(entry, cc) for entry in arch_list)


def wheel_covers(cc: str, arch: WheelArch) -> bool:
    """Whether a torch wheel with these compiled archs runs on compute capability ``cc``."""
    return arch_list_covers((*arch.sass, *(f"{p}+PTX" for p in arch.ptx)), cc)


@dataclass(frozen=True)
class CudaTargets:
    cuda: str
    min_cc: str
    max_cc: str
    targets: tuple[str, ...]  # ("50", "52", ...): sm_XY numbers nvcc can target
    inferred_from: str | None  # set when this release is not in the table
    sources: str


@dataclass(frozen=True)
class CudaRelease:
    cuda: str  # "12.4"
    full: str  # "12.4.1"
    min_driver: str | None  # Linux x86_64, None where not published
    compat_floor: str  # minor-version-compatibility floor, e.g. "525.60.13"
    uncertain: bool
    sources: str


@dataclass(frozen=True)
class CudaImage:
    tag: str
    full: str
    cuda: str
    flavor: str  # base | runtime | devel
    cudnn: str  # none | cudnn8 | cudnn9 | cudnn
    os: str  # ubuntu22.04
    uncertain: bool


# Short names people write in profiles -> canonical table names.
_GPU_ALIASES = {
    "a10g": "NVIDIA A10G (AWS)",
    "rtx3090": "GeForce RTX 3090",
    "rtx4090": "GeForce RTX 4090",
    "rtx5090": "GeForce RTX 5090",
    "rtx5080": "GeForce RTX 5080",
    "rtxa6000": "NVIDIA RTX A6000",
    "rtx6000ada": "NVIDIA RTX 6000 Ada",
    "rtxpro6000": "NVIDIA RTX PRO 6000 Blackwell (Server/Workstation)",
    "orin": "Jetson AGX Orin / Orin NX / Orin Nano",
    "thor": "Jetson T5000 / T4000 (Jetson AGX Thor)",
    "xavier": "Jetson AGX Xavier / Xavier NX",
    "gb10": "NVIDIA GB10 (DGX Spark)",
    "p100": "Tesla P100",
    "p40": "Tesla P40 / P4",
    "p4": "Tesla P40 / P4",
    "m60": "Tesla M60 / M40",
    "m40": "Tesla M60 / M40",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.cache
def gpus() -> dict[str, Gpu]:
    """Canonical name -> Gpu."""
    out = {}
    for r in _rows("gpu_cc.csv"):
        out[r["gpu_name"]] = Gpu(
            r["gpu_name"],
            r["compute_capability"],
            r["architecture"],
            r["uncertain"] == "?",
            r["sources"],
        )
    return out


@functools.cache
def _gpu_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name in gpus():
        index[_norm(name)] = name
        short = re.sub(r"^(nvidia|geforce|tesla)\s+", "", name, flags=re.I)
        short = re.sub(r"\s*\(.*\)$", "", short)
        index.setdefault(_norm(short), name)
    for alias, name in _GPU_ALIASES.items():
        index[_norm(alias)] = name
    return index


def find_gpu(name: str) -> Gpu | None:
    canonical = _gpu_index().get(_norm(name))
    return gpus()[canonical] if canonical else None


def forward_compatible(gpu: Gpu) -> bool:
    """Whether CUDA forward compatibility (the cuda-compat libraries: a newer CUDA on an
    older driver) runs on this GPU: NVIDIA supports it on datacenter GPUs, not on GeForce
    and RTX cards (CUDA Compatibility guide, "Forward Compatibility")."""
    return not any(word in gpu.name.upper() for word in ("GEFORCE", "RTX", "TITAN"))


def gpu_names() -> list[str]:
    """Short names accepted in profiles (for did-you-mean)."""
    return sorted(_gpu_index())


def _minor_or_none(text: str) -> str | None:
    return text if re.fullmatch(r"\d+\.\d+", text) else None


@functools.cache
def torch_releases() -> dict[str, TorchRelease]:
    out = {}
    for r in _rows("torch_cuda.csv"):
        out[r["torch_version"]] = TorchRelease(
            minor=r["torch_version"],
            python_min=r["python_min"],
            python_max=r["python_max"],
            cuda=tuple(v for v in r["cuda_versions"].split(";") if v),
            stable_cuda=tuple(v for v in r["stable_cuda"].split(";") if v),
            pypi_cuda=r["pypi_default_cuda"]
            if re.fullmatch(r"\d+\.\d+", r["pypi_default_cuda"])
            else None,
            uncertain=r["uncertain"] == "?",
            notes=r["notes"],
            sources=r["sources"],
        )
    return out


def torch_unverified(minor: str) -> bool:
    """A release the sources list as planned, not verified as released (e.g. 2.14 in S1/S3)."""
    rel = torch_releases().get(minor)
    return bool(rel and rel.uncertain and "not verified as released" in rel.notes)


def torch_minor(version: str) -> str:
    v = Version(version)
    return f"{v.major}.{v.minor}"


# Latest patch release of each torch minor (what "torch: 2.5" or "~=2.5" resolves to).
# Source: PyPI release history (S2's previous-versions table lists the same patches).
TORCH_PATCHES = {
    "1.13": "1.13.1",
    "2.0": "2.0.1",
    "2.1": "2.1.2",
    "2.2": "2.2.2",
    "2.3": "2.3.1",
    "2.4": "2.4.1",
    "2.5": "2.5.1",
    "2.6": "2.6.0",
    "2.7": "2.7.1",
    "2.8": "2.8.0",
    "2.9": "2.9.1",
    "2.10": "2.10.0",
    "2.11": "2.11.0",
    "2.12": "2.12.1",
    "2.13": "2.13.0",
    "2.14": "2.14.1",
}

DEFAULT_TORCH = "2.13.0"


def _version_range(spec: str) -> list[str]:
    """'2.12-2.14' -> ['2.12', '2.13', '2.14']; '2.8' -> ['2.8']."""
    if "-" not in spec:
        return [spec]
    lo, hi = spec.split("-")
    major = lo.split(".")[0]
    return [f"{major}.{m}" for m in range(int(lo.split(".")[1]), int(hi.split(".")[1]) + 1)]


@functools.cache
def wheel_archs() -> dict[tuple[str, str], WheelArch]:
    """(torch minor, CUDA variant) -> archs in the official Linux x86_64 wheels."""
    out: dict[tuple[str, str], WheelArch] = {}
    for r in _rows("torch_wheel_arch.csv"):
        spec = r["torch_version"]
        if " " in spec:  # e.g. "2.12-2.14 aarch64": other platforms are out of scope
            continue
        ptx = tuple(m.group(0) for m in re.finditer(r"\d+\.\d+", r["ptx_arch"]))[:1]
        entry = WheelArch(
            sass=tuple(v for v in r["sass_arch_list"].split(";") if v),
            ptx=ptx,
            uncertain=r["uncertain"] == "?" or "?" in r["ptx_arch"],
            sources=r["sources"],
        )
        for minor in _version_range(spec):
            out[(minor, r["cuda_variant"])] = entry
    return out


@functools.cache
def cuda_targets() -> dict[str, CudaTargets]:
    rows = _rows("cuda_arch.csv")
    out: dict[str, CudaTargets] = {}
    for r in rows:
        raw = r["sm_targets"]
        same_as = re.search(r"\bas ([\d.]+)", raw)
        targets = out[same_as.group(1)].targets if same_as else tuple(raw.split(";"))
        inferred = same_as.group(1) if same_as and r["uncertain"] == "?" else None
        out[r["cuda_version"]] = CudaTargets(
            r["cuda_version"], r["min_cc"], r["max_cc"], targets, inferred, r["sources"]
        )
    return out


def targets_for(cuda: str) -> CudaTargets | None:
    """What nvcc of this release can target; a release missing from the table takes the
    nearest earlier row of the same major (e.g. 13.2 -> 13.0), marked as inferred."""
    table = cuda_targets()
    if cuda in table:
        return table[cuda]
    same_major = [
        v for v in table if v.split(".")[0] == cuda.split(".")[0] and vkey(v) < vkey(cuda)
    ]
    if not same_major:
        return None
    base = table[max(same_major, key=vkey)]
    return CudaTargets(cuda, base.min_cc, base.max_cc, base.targets, base.cuda, base.sources)


@functools.cache
def cuda_releases() -> dict[str, CudaRelease]:
    """Full release ("12.4.1") -> CudaRelease."""
    out = {}
    for r in _rows("cuda_driver.csv"):
        full = r["cuda_release"]
        if not re.fullmatch(r"\d+\.\d+\.\d+", full):
            continue
        drv = r["min_driver_linux_x86_64"]
        out[full] = CudaRelease(
            cuda=r["cuda_version"],
            full=full,
            min_driver=drv if re.fullmatch(r"[\d.]+", drv) else None,
            compat_floor=r["minor_compat_exact_floor"],
            uncertain=r["uncertain"] == "?",
            sources=r["sources"],
        )
    return out


def driver_for(full: str) -> tuple[str | None, str | None]:
    """(minimum driver, note) for a CUDA release. Where NVIDIA does not publish the
    minimum for that update, use the latest earlier update of the same x.y that has one."""
    rel = cuda_releases().get(full)
    if rel and rel.min_driver:
        return rel.min_driver, None
    minor = ".".join(full.split(".")[:2])
    known = [r for r in cuda_releases().values() if r.cuda == minor and r.min_driver]
    earlier = [r for r in known if vkey(r.full) <= vkey(full)] or known
    if not earlier:
        return None, f"NVIDIA publishes no minimum driver for CUDA {full}"
    best = max(earlier, key=lambda r: vkey(r.full))
    return best.min_driver, f"minimum driver of {best.full}; {full}'s is not published"


def compat_floor(cuda: str) -> str | None:
    floors = [r.compat_floor for r in cuda_releases().values() if r.cuda == cuda and r.compat_floor]
    if floors:
        return floors[0]
    major = cuda.split(".")[0]
    floors = [r.compat_floor for r in cuda_releases().values() if r.cuda.split(".")[0] == major]
    return floors[0] if floors else None


@functools.cache
def cuda_images() -> list[CudaImage]:
    return [
        CudaImage(
            r["tag"],
            r["cuda_full"],
            r["cuda_version"],
            r["flavor"],
            r["cudnn"],
            r["os"],
            r["uncertain"] == "?",
        )
        for r in _rows("cuda_images.csv")
    ]


# What each supported OS ships as its python3, for the "system" install method.
OS_PYTHON = {
    "ubuntu20.04": "3.8",
    "ubuntu22.04": "3.10",
    "ubuntu24.04": "3.12",
    "debian12": "3.11",
    "debian13": "3.13",
}
