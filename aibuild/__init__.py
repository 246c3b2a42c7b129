"""aibuild: declarative, CUDA-aware container images for AI training.

The package is laid out as the pipeline it runs (``aibuild.pipeline`` calls the stages
in order; the CLI in ``aibuild.cli`` only parses and prints):

- ``aibuild.profile``    YAML profile -> validated, resolved ``BuildPlan``
- ``aibuild.knowledge``  the compatibility facts (GPUs, CUDA, drivers, torch wheels)
- ``aibuild.image``      ``BuildPlan`` -> build context -> image -> build record
- ``aibuild.publish``    lock, SBOM, normalise (reproducible), push, diff
- ``aibuild.oci``        image references, archives, blob cache, registry client
- ``aibuild.run``        image -> container with GPU passthrough
- ``aibuild.doctor``     this host against a profile
- ``aibuild.train``      the PyTorch trainer that images run by default

For scripting aibuild from Python, the names below are importable from ``aibuild``
itself; each is loaded on first use, so ``import aibuild`` stays light::

    import aibuild
    plan = aibuild.plan_for("gpu-h100", ["software.torch=2.13.0"])
    print(aibuild.render_dockerfile(plan))
    result = aibuild.make_image(aibuild.ImageRequest("cpu"))
    console = aibuild.Console(sys.stdout.buffer, sys.stderr.buffer, say=logging.info)
    aibuild.run_image("cpu", [], aibuild.ContainerOptions(args=("--epochs", "1")), console)
    aibuild.push_image("cpu", ["registry.example.com/team/train:v1"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    "load_profile": "aibuild.profile.load",
    "Profile": "aibuild.profile.load",
    "plan_for": "aibuild.profile.resolve",
    "validate": "aibuild.profile.resolve",
    "BuildPlan": "aibuild.profile.plan",
    "RenderOptions": "aibuild.profile.plan",
    "render_dockerfile": "aibuild.image.render",
    "write_context": "aibuild.image.render",
    "BuildSettings": "aibuild.image.build",
    "ImageRequest": "aibuild.pipeline",
    "ImageResult": "aibuild.pipeline",
    "PublishSettings": "aibuild.pipeline",
    "build_image": "aibuild.pipeline",
    "make_image": "aibuild.pipeline",
    "lock_profile": "aibuild.pipeline",
    "push_image": "aibuild.pipeline",
    "Console": "aibuild.run.lifecycle",
    "ContainerOptions": "aibuild.run.config",
    "run_image": "aibuild.run.container",
    "AibuildError": "aibuild.errors",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'aibuild' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
