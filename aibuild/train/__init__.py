"""The embedded PyTorch trainer (``aibuild train``), the entrypoint of every image.

Modules, one job each:

- :mod:`~aibuild.train.config`      the ``training:`` keys (no torch import)
- :mod:`~aibuild.train.data`        dataset readers (IDX, CIFAR pickles, image folders, text)
- :mod:`~aibuild.train.models`      the model registry (cnn, mlp, rnn, lstm, transformer)
- :mod:`~aibuild.train.schedule`    warmup + cosine learning rate, a pure function of the step
- :mod:`~aibuild.train.distributed` torchrun / DDP process group
- :mod:`~aibuild.train.checkpoint`  atomic checkpoints, keep-last-K, resume
- :mod:`~aibuild.train.loop`        the training loop
- :mod:`~aibuild.train.selftest`    ``--selftest``: versions, devices, measured speed
- :mod:`~aibuild.train.cli`         the click command

Nothing here imports torch at package import time.
"""
