"""The embedded PyTorch trainer (``aibuild train``), the entrypoint of every image.

Modules, one job each:

- :mod:`~aibuild.train.config`      the ``training:`` keys (no torch import)
- :mod:`~aibuild.train.cli`         the click command; bounded YAML config, ``--set``
- :mod:`~aibuild.train.formats`     file decoders (IDX, PNG, PGM/PPM, safe pickles), size limits
- :mod:`~aibuild.train.data`        datasets (mnist, cifar10, imagefolder, text, synthetic)
- :mod:`~aibuild.train.models`      the model registry (cnn, mlp, rnn, lstm, transformer)
- :mod:`~aibuild.train.schedule`    warmup + cosine learning rate, a pure function of the step
- :mod:`~aibuild.train.distributed` torchrun / DDP process group
- :mod:`~aibuild.train.device`      device and precision choice, determinism, versions
- :mod:`~aibuild.train.checkpoint`  the checkpointer: saved state, atomic writes, resume
- :mod:`~aibuild.train.metrics`     the metrics writer: console lines, metrics.jsonl, summary.json
- :mod:`~aibuild.train.loop`        the training loop
- :mod:`~aibuild.train.selftest`    ``--selftest``: versions, devices, measured speed

``assets/`` holds the embedded data (digits IDX files, text/macbeth.txt) with its
README and LICENSE. Nothing here imports torch at package import time.
"""
