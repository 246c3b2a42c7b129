"""Stage 4, running: an image -> a container with GPU passthrough and training defaults.

- ``gpus``: ``--gpus`` read exactly as ``docker run --gpus`` reads it.
- ``container``: what to run (a profile's image, any image, the last build), the
  container's configuration, and its life: stream, signals, exit code, removal; attached
  to this terminal for ``-it`` (``terminal``: raw mode, resizes, the byte pumps).
- ``shell``, ``jupyter``, ``devcontainer``: ``aibuild shell``, ``aibuild jupyter`` (the
  dev image's JupyterLab on 127.0.0.1) and the Dev Container file for VS Code / PyCharm.
"""
