"""aibuild: declarative, CUDA-aware container images for AI training.

The public API mirrors the pipeline, one module a stage:

- :mod:`aibuild.profile`   load YAML profiles (``extends:``, ``--set``) -> ``Profile``
- :mod:`aibuild.profile.resolve`   validate against the knowledge base -> frozen ``BuildPlan``
- :mod:`aibuild.image.render`    ``BuildPlan`` -> build context (Dockerfile, runtime, profile)
- :mod:`aibuild.build`     build context -> image, through the Docker SDK
- :mod:`aibuild.run`       image -> container with GPU passthrough
- :mod:`aibuild.publish`   image -> registry digest, reproducibly
- :mod:`aibuild.train`     the PyTorch trainer that images run by default

Nothing heavy is imported here.
"""

__version__ = "0.1.0"
