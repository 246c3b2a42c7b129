"""Stage 4, running: an image -> a container with GPU passthrough and training defaults.

- ``gpus``: ``--gpus`` read exactly as ``docker run --gpus`` reads it.
- ``config``: what to run (a profile's image, any image, the last build) and the
  container's configuration, pure; the cluster exports write their jobs from it.
- ``lifecycle``: the container's life (create, stream, signals, exit code, removal) and
  the reaping of containers whose ``aibuild run`` was killed (``owner``: the owner label).
- ``interactive``: ``aibuild run -it`` and ``aibuild shell``, attached to this terminal
  (``terminal``: raw mode, resizes, the byte pumps).
- ``container``: ``aibuild run``; ``multinode``: ``aibuild run --nodes N``
  (``rendezvous``: torchrun's, shared with the exports).
- ``jupyter``, ``devcontainer``: ``aibuild jupyter`` (the dev image's JupyterLab on
  127.0.0.1) and the Dev Container file for VS Code / PyCharm.

Nothing here prints: runs take a ``lifecycle.Console`` (the container's output streams
and a ``Log``) from the caller.
"""
