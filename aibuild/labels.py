"""Every image and container label aibuild writes or reads, named once.

OCI's annotation keys (``org.opencontainers.image.*``) describe the image to any
tool; ``ai.aibuild.*`` carry what aibuild itself reads back: the profile and its
hash (``lock``, ``doctor``), the CUDA facts (``doctor``), the SBOM and the
reproducible epoch (``push``), and the markers on the containers it starts.
"""

from __future__ import annotations

# OCI image annotations (image-spec annotations.md)
OCI_TITLE = "org.opencontainers.image.title"
OCI_DESCRIPTION = "org.opencontainers.image.description"
OCI_VERSION = "org.opencontainers.image.version"
OCI_BASE_NAME = "org.opencontainers.image.base.name"
OCI_REVISION = "org.opencontainers.image.revision"
OCI_SOURCE = "org.opencontainers.image.source"

# aibuild's own, on images
VERSION = "ai.aibuild.version"
PROFILE = "ai.aibuild.profile"
PROFILE_HASH = "ai.aibuild.profile-hash"
ACCELERATOR = "ai.aibuild.accelerator"
TORCH = "ai.aibuild.torch"
TORCH_VARIANT = "ai.aibuild.torch-variant"
PYTHON = "ai.aibuild.python"
CUDA = "ai.aibuild.cuda"
ARCH_LIST = "ai.aibuild.arch-list"
MIN_DRIVER = "ai.aibuild.min-driver"
GPU = "ai.aibuild.gpu"
SBOM = "ai.aibuild.sbom"
SBOM_DIGEST = "ai.aibuild.sbom.sha256"
REPRODUCIBLE = "ai.aibuild.reproducible"

# on containers aibuild starts
RUN = "ai.aibuild.run"  # `aibuild run`
RUN_OWNER = "ai.aibuild.run.owner"  # host:pid:start:uid of the live `aibuild run` (not -d)
# on the containers of a job file aibuild wrote (export compose, export slurm --runtime
# docker): what it is, never an owner (a job is not a run that a reaper may end)
EXPORTED = "ai.aibuild.exported"
HELPER = "ai.aibuild.helper"  # throwaway probes (base detection, package inspection, doctor)
