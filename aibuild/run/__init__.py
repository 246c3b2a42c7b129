"""Stage 4, running: an image -> a container with GPU passthrough and training defaults.

- ``gpus``: ``--gpus`` read exactly as ``docker run --gpus`` reads it.
- ``container``: what to run (a profile's image, any image, the last build), the
  container's configuration, and its life: stream, signals, exit code, removal.
"""
