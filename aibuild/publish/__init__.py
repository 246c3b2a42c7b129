"""Stage 3, publishing: an image -> a reproducible image -> a registry digest.

- ``lock``: lock files (exact pins, base image identity, SOURCE_DATE_EPOCH).
- ``sbom``: the CycloneDX SBOM of an image's Python and OS packages.
- ``normalise``: rewrite an image's layers and config so rebuilds are bit-identical.
- ``push``: push directly through the registry API (owning the digest) or through the engine.
- ``diff``: what differs between two images, down to files.

The order in which ``aibuild image`` calls them lives in ``aibuild.pipeline``.
"""
