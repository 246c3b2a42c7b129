"""The frozen result of validation + resolution: everything a build needs, decided.

A ``BuildPlan`` holds no logic: the renderer loops over it, the builder tags
with it, the runner reads its run defaults. It is JSON-serialisable
(``aibuild check --json`` prints ``plan.to_dict()``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aibuild.contract import WORKSPACE as DEFAULT_WORKDIR

DEV_TAG_SUFFIX = "-dev"


@dataclass(frozen=True)
class RenderOptions:
    """Build-site options that are not part of the profile (they must not change
    what the image is, only how it is fetched).

    base_image:       overrides ``software.base_image`` (e.g. a bootstrapped test base)
    wheelhouse:       a local directory of wheels; the only source of Python packages
    wheelhouse_url:   where the build reaches that wheelhouse over HTTP (a loopback server
                      of aibuild's own), instead of copying it into the context
    find_links:       extra ``--find-links`` locations (URLs) for pip
    extra_index_urls: extra ``--extra-index-url`` locations for pip
    ca_cert:          a PEM file trusted during the build only (never in the final stage)
    template_dir:     a directory whose templates override the shipped blocks
    base_os:          what the base image really is ("debian12", "ubuntu22.04"), learnt
                      from its /etc/os-release by the builder; overrides software.os
    base_python:      the python3 X.Y already in the base image, or None when it has none
    constraints:      exact pins (PEP 508 "name==version") from a lock file
    reproducible:     render for bit-identical rebuilds (no .pyc timestamps, apt caches
                      removed, SOURCE_DATE_EPOCH set)
    source_date_epoch: the fixed build time used in reproducible mode
    """

    base_image: str | None = None
    wheelhouse: str | None = None
    wheelhouse_url: str | None = None
    find_links: tuple[str, ...] = ()
    extra_index_urls: tuple[str, ...] = ()
    ca_cert: str | None = None
    template_dir: str | None = None
    base_os: str | None = None
    base_python: str | None = None
    constraints: tuple[str, ...] = ()
    reproducible: bool = False
    source_date_epoch: int | None = None


@dataclass(frozen=True)
class ProjectPlan:
    """The profile's ``project:``, resolved: the user's own code and what it needs."""

    path: str  # the source folder, absolute
    exclude: tuple[str, ...]  # project.exclude (.dockerignore syntax; after the defaults)
    requirements_file: str | None  # absolute path of the requirements.txt / pyproject.toml
    requirements: tuple[str, ...]  # its requirements, normalised PEP 508, torch left out
    command: tuple[str, ...]  # the image's default command (argv); () = the trainer
    workdir: str  # where the files go and the working directory
    labels: tuple[tuple[str, str], ...]  # OCI source/revision when the path is in git


@dataclass(frozen=True)
class BuildPlan:
    """A fully resolved profile. Every field is decided; nothing is left to templates."""

    # identity
    profile_name: str
    description: str
    profile_hash: str  # sha256 of the canonical resolved profile (first 12 hex in labels)
    profile_yaml: str  # the resolved profile as YAML, baked into the image
    # hardware
    accelerator: str  # "nvidia" | "cpu"
    gpu: str | None  # canonical model name from the knowledge base, e.g. "NVIDIA A100"
    gpu_count: int
    compute_capability: str | None  # "8.0"
    arch_list: tuple[str, ...]  # TORCH_CUDA_ARCH_LIST entries, e.g. ("8.0",) or ("9.0+PTX",)
    driver: str | None  # host driver from the profile, if given
    min_driver: str | None  # minimum Linux driver for the resolved CUDA release
    # software
    os: str  # "ubuntu22.04", "ubuntu24.04", "debian12"
    os_family: str  # "ubuntu" | "debian"
    cuda: str | None  # "12.4" (None for cpu): the CUDA torch's wheels are built for
    cuda_full: str | None  # "12.4.1": the nvidia/cuda image release (None: no nvidia/cuda)
    cudnn: bool
    cuda_source: str | None  # "wheels" | "image" (None for cpu)
    cuda_toolkit: bool  # nvcc in a devel builder stage
    cuda_stack: str  # where the image's CUDA comes from, in words (check and the header)
    require_cuda: str | None  # NVIDIA_REQUIRE_CUDA, e.g. "cuda>=13.0" (wheels source)
    compile_deps: bool  # gcc, libc headers and Python headers at run time (Triton, compile)
    python: str  # "3.11"
    python_install: str  # "base" (image has it) | "system" (distro apt) | "uv" (uv-managed)
    torch: str  # exact version, e.g. "2.5.1"
    torch_variant: str  # "cu124" | "cpu"
    torch_index_url: str | None  # https://download.pytorch.org/whl/<variant>; None: PyPI
    base_image: str  # builder-stage base (nvidia/cuda devel with cuda_toolkit)
    runtime_image: str  # final-stage base (the same as base_image unless a toolkit is used)
    pip: tuple[str, ...]  # normalised PEP 508 requirements, sorted
    apt: tuple[str, ...]  # Debian package names, sorted
    env: tuple[tuple[str, str], ...]  # sorted (KEY, value)
    # training, run, image
    training: tuple[tuple[str, Any], ...]  # sorted items of the training: section
    run_gpus: str  # "all" | "none" | "N" | "device=0,1"
    run_shm_size: str
    run_ipc: str  # "private" | "host" (host: the host's IPC namespace, /dev/shm unbounded)
    image_name: str  # repository, e.g. "registry.example.com/team/train"
    image_tag: str  # e.g. "gpu-a100-torch2.5.1-cu124"
    image_compression: str = "gzip"  # layer compression of aibuild's pushes (gzip | zstd)
    warnings: tuple[str, ...] = field(default=())
    # the user's own code (None: the image runs only the embedded trainer)
    project: ProjectPlan | None = None
    dev_jupyter: bool = False  # also a `<tag>-dev` image with JupyterLab

    @property
    def image_ref(self) -> str:
        return f"{self.image_name}:{self.image_tag}"

    @property
    def dev_image_ref(self) -> str:
        """The development image (``dev:``): the training image plus its tools."""
        return f"{self.image_name}:{self.image_tag}{DEV_TAG_SUFFIX}"

    @property
    def workdir(self) -> str:
        return self.project.workdir if self.project else DEFAULT_WORKDIR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["env"] = dict(self.env)
        data["training"] = dict(self.training)
        data["image_ref"] = self.image_ref
        data.pop("profile_yaml")
        return data
