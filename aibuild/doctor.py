"""Doctor: this host (engine, NVIDIA driver, GPUs, container runtime) against a profile.

Each check is a ``Check`` line with a status and, when it fails, the fix. The
pure parts (``parse_nvidia_smi``, ``arch_covers``, ``driver_at_least``,
``profile_checks``) are tested with recorded ``nvidia-smi`` outputs; the
``nvidia-smi`` run is injectable: ``diagnose(smi_output=...)``, or the environment
variables ``AIBUILD_NVIDIA_SMI`` (the command to run) and ``AIBUILD_NVIDIA_SMI_OUTPUT``
(a file holding a recorded output, used instead of running anything).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild import knowledge as kb
from aibuild import labels
from aibuild.engine import EngineFacts, engine_address, engine_limits, facts_from, get_client
from aibuild.errors import AibuildError
from aibuild.oci.compress import ZSTD, ZSTD_MIN_DOCKER
from aibuild.run.gpus import NO_DRIVER_MARKER, GpuRequest

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan

SMI_QUERY = "name,driver_version,compute_cap,memory.total"
SMI_QUERY_OLD = "name,driver_version,memory.total"  # drivers before 510 lack compute_cap
MIN_FREE_DISK_GB = 20.0  # a CUDA + torch image and its build layers
MAX_SMI_BYTES = 1 << 20  # a GPU list; a recorded output larger than this is not one
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit and restart the engine "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/"
    "install-guide.html), or run with --gpus none"
)

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"


@dataclass(frozen=True)
class HostGpu:
    """One GPU as nvidia-smi reports it."""

    index: int
    name: str
    driver: str
    compute_cap: str | None  # "8.0"; None when the driver cannot say
    memory: str


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # ok | warn | FAIL | info
    detail: str
    fix: str = ""


@dataclass
class Report:
    """Everything doctor found."""

    checks: list[Check] = field(default_factory=list)
    gpus: list[HostGpu] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None

    @property
    def ok(self) -> bool:
        return not any(check.status == FAIL for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "profile": self.profile,
            "engine": self.engine,
            "gpus": [asdict(gpu) for gpu in self.gpus],
            "checks": [asdict(check) for check in self.checks],
        }


# ---------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------


class SmiError(AibuildError):
    """nvidia-smi is absent or failed."""


def parse_nvidia_smi(text: str) -> list[HostGpu]:
    """``nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total
    --format=csv,noheader`` output (or the same without compute_cap) -> GPUs.

    Raises SmiError when the text is nvidia-smi's own failure message.
    """
    gpus: list[HostGpu] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            name, driver, cap, memory = parts
        elif len(parts) == 3:
            name, driver, memory = parts
            cap = ""
        else:
            raise SmiError(f"nvidia-smi: {line}")
        if not re.fullmatch(r"\d+(\.\d+)+", driver):
            raise SmiError(f"nvidia-smi: {line}")
        cap_value = cap if re.fullmatch(r"\d+\.\d+", cap) else None
        gpus.append(HostGpu(len(gpus), name, driver, cap_value, memory))
    return gpus


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def driver_at_least(installed: str, minimum: str) -> bool:
    """Whether driver ``installed`` (e.g. "550.54.14") is at least ``minimum``."""
    return _version_tuple(installed) >= _version_tuple(minimum)


def profile_checks(plan: BuildPlan, gpus: Sequence[HostGpu], smi_error: str | None) -> list[Check]:
    """The profile's requirements against the GPUs found (pure)."""
    checks: list[Check] = []
    if plan.accelerator != "nvidia":
        checks.append(Check("profile", OK, f"{plan.profile_name}: CPU image, no GPU needed"))
        return checks
    if smi_error is not None or not gpus:
        checks.append(
            Check(
                "profile gpus",
                FAIL,
                f"{plan.profile_name} needs NVIDIA GPUs; none found "
                f"({smi_error or 'no GPU listed'})",
                "run on a host with NVIDIA GPUs and their driver, or use a cpu profile",
            )
        )
        return checks
    if plan.min_driver:
        low = [g for g in gpus if not driver_at_least(g.driver, plan.min_driver)]
        if low:
            checks.append(
                Check(
                    "driver >= min",
                    FAIL,
                    f"driver {low[0].driver} < {plan.min_driver}, the minimum for CUDA {plan.cuda}",
                    f"upgrade the NVIDIA driver to {plan.min_driver} or newer, or pick an older "
                    "software.cuda / software.torch in the profile",
                )
            )
        else:
            checks.append(
                Check(
                    "driver >= min",
                    OK,
                    f"driver {gpus[0].driver} >= {plan.min_driver} (CUDA {plan.cuda})",
                )
            )
    arch = ", ".join(plan.arch_list) or "(empty)"
    for gpu in gpus:
        label = f"gpu {gpu.index} arch"
        if gpu.compute_cap is None:
            checks.append(
                Check(label, WARN, f"{gpu.name}: compute capability unknown (driver too old)")
            )
        elif kb.arch_list_covers(plan.arch_list, gpu.compute_cap):
            checks.append(
                Check(
                    label,
                    OK,
                    f"{gpu.name} (compute capability {gpu.compute_cap}) covered by {arch}",
                )
            )
        else:
            checks.append(
                Check(
                    label,
                    FAIL,
                    f"{gpu.name} (compute capability {gpu.compute_cap}) not covered by "
                    f"the image's arch list {arch}",
                    f"set hardware.gpu to this GPU's model in the profile (arch list "
                    f"{gpu.compute_cap}), or use a torch build whose arch list covers it",
                )
            )
    if plan.gpu_count and len(gpus) < plan.gpu_count:
        checks.append(
            Check(
                "gpu count",
                WARN,
                f"the profile expects {plan.gpu_count} GPUs per node; {len(gpus)} found",
                "lower hardware.gpus or run on a bigger host",
            )
        )
    return checks


# ---------------------------------------------------------------------------
# Probing the host
# ---------------------------------------------------------------------------


def pulls_zstd(facts: EngineFacts) -> bool | None:
    """Whether this Docker engine pulls zstd layers (the OCI ``+zstd`` media type that
    ``aibuild push --compression zstd`` writes); None when its version says nothing.

    Docker 23.0 added it: "Add support for pulling zstd compressed layers. moby/moby#41759,
    moby/moby#42862" (https://github.com/moby/moby/releases/tag/v23.0.0); older engines
    refuse the layer's media type. Both image stores of 23+ pull it (the containerd store
    through containerd's own zstd support, 1.5 and later). Podman's compatible API reports
    Podman's version, not Docker's: not judged here.
    """
    if "podman" in facts.version.lower() or "podman" in facts.os.lower():
        return None
    match = re.match(r"(\d+)\.(\d+)", facts.version)
    if not match:
        return None
    return (int(match[1]), int(match[2])) >= ZSTD_MIN_DOCKER


def zstd_check(facts: EngineFacts, plan: BuildPlan | None) -> Check:
    """The "pulls zstd" line: whether images pushed with ``--compression zstd`` run here; a
    warning only when the profile asks for zstd and this engine cannot pull it."""
    wanted = plan is not None and plan.image_compression == ZSTD
    minimum = ".".join(map(str, ZSTD_MIN_DOCKER))
    can = pulls_zstd(facts)
    if can is None:
        return Check(
            "pulls zstd", INFO, f"unknown for {facts.version} (Docker pulls zstd from {minimum})"
        )
    if can:
        return Check(
            "pulls zstd",
            OK,
            f"yes: Docker {facts.version} pulls zstd layers (aibuild push --compression zstd)",
        )
    return Check(
        "pulls zstd",
        WARN if wanted else INFO,
        f"no: Docker {facts.version} pulls gzip layers only (zstd needs Docker {minimum}+)",
        f"push this profile with --compression gzip, or upgrade the engine to Docker "
        f"{minimum} or newer",
    )


def query_nvidia_smi(command: str | None = None) -> str:
    """nvidia-smi's GPU list (CSV); a recorded file when AIBUILD_NVIDIA_SMI_OUTPUT names one.

    Raises SmiError when nvidia-smi is missing or fails.
    """
    recorded = os.environ.get("AIBUILD_NVIDIA_SMI_OUTPUT")
    if recorded:
        try:
            with Path(recorded).open("rb") as handle:
                data = handle.read(MAX_SMI_BYTES + 1)
        except OSError as exc:
            raise SmiError(
                f"AIBUILD_NVIDIA_SMI_OUTPUT={recorded}: cannot read it ({exc.strerror or exc})"
            ) from None
        if len(data) > MAX_SMI_BYTES:
            raise SmiError(
                f"AIBUILD_NVIDIA_SMI_OUTPUT={recorded}: larger than {MAX_SMI_BYTES} bytes"
            )
        return data.decode("utf-8", "replace")
    exe = command or os.environ.get("AIBUILD_NVIDIA_SMI") or "nvidia-smi"
    if shutil.which(exe) is None:
        raise SmiError(f"{exe} not found: no NVIDIA driver on this host")
    last = ""
    for query in (SMI_QUERY, SMI_QUERY_OLD):
        try:
            done = subprocess.run(
                [exe, f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",  # a driver's output is not always UTF-8
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SmiError(f"{exe} failed: {exc}") from None
        if done.returncode == 0:
            return done.stdout
        last = (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if (done.stdout + done.stderr).strip()
            else f"exit {done.returncode}"
        )
    raise SmiError(f"{exe} failed: {last}")


def _engine_checks(client: Any, plan: BuildPlan | None, report: Report) -> None:

    version = client.version()
    info = client.info()
    facts = facts_from(version, info)
    report.engine = {
        "address": engine_address(),
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "image_store": facts.store,
        "storage_driver": info.get("Driver"),
        "root_dir": info.get("DockerRootDir"),
        "runtimes": sorted((info.get("Runtimes") or {}).keys()),
        "default_runtime": info.get("DefaultRuntime"),
    }
    report.checks.append(
        Check(
            "engine",
            OK,
            f"Docker {version.get('Version')} (API {version.get('ApiVersion')}) at "
            f"{engine_address()}",
        )
    )
    store_detail = (
        "containerd (io.containerd.snapshotter.v1): image IDs are manifest digests, "
        "docker save writes an OCI layout"
        if facts.store == "containerd"
        else "classic (graph driver): image IDs are config digests"
    )
    report.checks.append(Check("image store", OK, store_detail))
    report.engine["pulls_zstd"] = pulls_zstd(facts)
    report.checks.append(zstd_check(facts, plan))
    for limit in engine_limits(facts):
        report.checks.append(Check("engine support", WARN, limit.problem, limit.fix))
    driver = info.get("Driver") or "unknown"
    report.checks.append(
        Check(
            "storage driver",
            OK if driver in ("overlay2", "overlayfs", "btrfs", "zfs") else WARN,
            driver,
            "" if driver != "vfs" else "vfs copies every layer: configure overlay2",
        )
    )
    root = info.get("DockerRootDir") or ""
    if root and Path(root).is_dir() and engine_address().startswith("unix://"):
        free_gb = shutil.disk_usage(root).free / 1024**3
        report.engine["free_disk_gb"] = round(free_gb, 1)
        report.checks.append(
            Check(
                "free disk",
                OK if free_gb >= MIN_FREE_DISK_GB else WARN,
                f"{free_gb:.1f} GiB free in {root}",
                ""
                if free_gb >= MIN_FREE_DISK_GB
                else f"free space (docker system prune): a CUDA image needs "
                f"~{MIN_FREE_DISK_GB:.0f} GiB",
            )
        )
    else:
        report.checks.append(
            Check("free disk", INFO, f"unknown (engine root {root or '?'} not local)")
        )


def gpu_probe(client: Any, image: str | None) -> tuple[str, str]:
    """Ask the engine for all GPUs in a throwaway container: (status, detail)."""
    import docker

    if image is None:
        return INFO, "no local image to probe a GPU request with"
    container = None
    try:
        container = client.containers.create(
            image,
            entrypoint=["true"],
            command=[],
            device_requests=[GpuRequest(count=-1).to_device_request()],
            network_disabled=True,
            labels={labels.HELPER: "1"},
        )
        try:
            container.start()
        except docker.errors.APIError as exc:
            message = str(getattr(exc, "explanation", exc))
            if NO_DRIVER_MARKER in message:
                return FAIL, f"a GPU request fails: {message}"
            if "exec" in message or "no such file" in message or "not found" in message:
                return OK, "the engine accepts GPU requests (its NVIDIA hook ran)"
            return WARN, f"a GPU request fails: {message}"
        container.wait(timeout=60)
        return OK, "the engine accepts GPU requests (--gpus all)"
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)


def _probe_image(client: Any, plan: BuildPlan | None) -> str | None:
    import docker

    if plan is not None:
        try:
            return str(client.images.get(plan.image_ref).id)
        except docker.errors.DockerException:
            pass
    images = client.images.list()
    return str(images[0].id) if images else None


def _runtime_check(client: Any, plan: BuildPlan | None, report: Report) -> None:
    runtimes = report.engine.get("runtimes") or []
    required = plan is not None and plan.accelerator == "nvidia"
    if "nvidia" in runtimes:
        report.checks.append(Check("nvidia runtime", OK, "the engine has the nvidia runtime"))
        return
    status, detail = gpu_probe(client, _probe_image(client, plan))
    if status == FAIL and not required:
        status = WARN if report.gpus else INFO
    report.checks.append(
        Check("nvidia runtime", status, detail, TOOLKIT_FIX if status in (FAIL, WARN) else "")
    )


def diagnose(
    plan: BuildPlan | None = None,
    *,
    smi_output: str | None = None,
    client_factory: Callable[[], Any] | None = None,
) -> Report:
    """Check the engine, the NVIDIA driver and GPUs, the runtime, and ``plan``'s needs."""

    report = Report(profile=plan.profile_name if plan else None)
    factory = client_factory or (lambda: get_client(timeout=60))
    client = None
    try:
        client = factory()
    except AibuildError as exc:
        first = exc.format().splitlines()
        report.checks.append(
            Check("engine", FAIL, first[0], first[1] if len(first) > 1 else "start an engine")
        )
    if client is not None:
        _engine_checks(client, plan, report)
    smi_error: str | None = None
    try:
        text = smi_output if smi_output is not None else query_nvidia_smi()
        report.gpus = parse_nvidia_smi(text)
    except SmiError as exc:
        smi_error = str(exc)
    needs_gpu = plan is not None and plan.accelerator == "nvidia"
    if smi_error is not None:
        report.checks.append(
            Check(
                "nvidia driver",
                FAIL if needs_gpu else INFO,
                smi_error,
                "install the NVIDIA driver (nvidia-smi must work)" if needs_gpu else "",
            )
        )
    elif report.gpus:
        drivers = sorted({g.driver for g in report.gpus})
        report.checks.append(Check("nvidia driver", OK, ", ".join(drivers)))
        for gpu in report.gpus:
            report.checks.append(
                Check(
                    f"gpu {gpu.index}",
                    OK,
                    f"{gpu.name}, compute capability {gpu.compute_cap or '?'}, {gpu.memory}",
                )
            )
    if client is not None:
        _runtime_check(client, plan, report)
        if client_factory is None:
            client.close()
    if plan is not None:
        report.checks.extend(profile_checks(plan, report.gpus, smi_error))
    return report


def format_report(report: Report) -> str:
    """The report as a table, with the fix under each failed or warned line."""
    width = max([len(c.name) for c in report.checks] + [5]) + 2
    lines = [f"{'CHECK':<{width}}{'STATUS':<8}DETAIL"]
    for check in report.checks:
        lines.append(f"{check.name:<{width}}{check.status:<8}{check.detail}")
        if check.fix and check.status in (FAIL, WARN):
            lines.append(f"{'':<{width}}{'':<8}fix: {check.fix}")
    verdict = "ready" if report.ok else "NOT ready"
    target = f" for {report.profile}" if report.profile else ""
    lines.append(f"\nthis host is {verdict}{target}")
    return "\n".join(lines)
