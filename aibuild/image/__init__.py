"""Stage 2, the image: ``BuildPlan`` -> build context -> image, with a record of what went in.

- ``render``: the Jinja2 templates -> Dockerfile and build context (deterministic bytes).
- ``context``: the context directory -> a deterministic tar, .dockerignore applied.
- ``build``: the tar -> an image through the engine's classic builder.
- ``progress``: the builder's JSON stream -> step events -> reporters.
- ``helpers``: throwaway containers that inspect a base image or a built image.
- ``record``: the build record under ``.aibuild/builds/``, the one module that knows its format.
- ``wheelhouse``: download every wheel an image needs, for offline builds.
"""
