"""The image contract: what every aibuild image is, named once.

The template (through ``image.render``'s context), ``run``, the Dev Container file and
the cluster exports all read these names, so that the image and everything that starts
it agree: the entrypoint, the user it runs as, where the project, the data and the
results go, and where the resolved profile lies. The labels an image carries are named
in :mod:`aibuild.labels`, the other half of the contract.

Standard library only: the trainer (which runs inside images that hold just torch,
click and pyyaml) may read it.
"""

from __future__ import annotations

# What the image runs: ``aibuild train`` (a project's ``command`` replaces it).
TRAIN_ENTRYPOINT = ("aibuild", "train")

# The non-root user every image runs as (``USER 1000:1000``).
USER = "aibuild"
UID = 1000
GID = 1000
USER_SPEC = f"{UID}:{GID}"

# Directories of the image.
WORKSPACE = "/workspace"  # the working directory and a project's default place
DATA_DIR = "/data"  # `--data` is mounted here, read-only
OUTPUT_DIR = "/output"  # `--output` is mounted here; checkpoints and metrics go here
RUNTIME_DIR = "/opt/aibuild"  # aibuild's own code (the embedded trainer)
PROFILE_PATH = "/etc/aibuild/profile.yaml"  # the resolved profile

# The environment that tells the trainer where those are.
ENV_DATA = "AIBUILD_DATA"
ENV_OUTPUT = "AIBUILD_OUTPUT"
ENV_PROFILE = "AIBUILD_PROFILE"
