"""The host's thread pool, sized to its work (``cpu_threads: 0``), and the device wait.

On CUDA the host's part of a step is the batch gather: a pool of all the cores there
spin-waits between gathers (libgomp's default) and burns them while the GPU computes
(benchmarks/bench_train.py --phases measures it); auto sizes it to the gather.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from aibuild.train.config import TrainConfig
from aibuild.train.device import (
    GATHER_VALUES_PER_THREAD,
    SMALL_MODEL,
    DeviceWait,
    auto_cpu_threads,
)


def test_cuda_pool_is_sized_to_the_batch_gather() -> None:
    mnist_batch = 64 * 1 * 28 * 28
    assert auto_cpu_threads("cuda", 86_000_000, mnist_batch, available=16) == 1
    imagenet_batch = 256 * 3 * 224 * 224  # 38.5M values: a few threads copy it
    assert auto_cpu_threads("cuda", 25_000_000, imagenet_batch, available=16) == 5
    assert auto_cpu_threads("cuda", 1, imagenet_batch, available=2) == 2  # never above the host
    assert auto_cpu_threads("cuda", 1, 0, available=16) == 1
    assert auto_cpu_threads("cuda", 1, GATHER_VALUES_PER_THREAD + 1, available=16) == 2


def test_cpu_pool_is_torchs_unless_the_model_is_tiny() -> None:
    assert auto_cpu_threads("cpu", SMALL_MODEL - 1, 10**9, available=16) == 1
    assert auto_cpu_threads("cpu", SMALL_MODEL, 10**9, available=16) is None
    assert auto_cpu_threads("mps", 10, 10, available=16) is None


def test_device_wait_is_a_no_op_off_cuda() -> None:
    wait = DeviceWait(torch.device("cpu"))
    assert wait.event is None
    wait()


@pytest.mark.parametrize(("params_over", "expected"), [(False, 1), (True, None)])
def test_the_trainer_applies_auto(
    params_over: bool, expected: int | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The loop asks auto_cpu_threads with its device, model size and batch, and sets it."""
    from aibuild.train import loop
    from aibuild.train.loop import TrainOptions, run_training

    asked: list[tuple[str, int, int]] = []

    def spy(device_type: str, n_params: int, batch_values: int, available: int) -> int | None:
        asked.append((device_type, n_params, batch_values))
        return None if params_over else 1

    seen: list[int] = []
    real = loop.Trainer._announce_model

    def announce(self: Any) -> int:
        n = real(self)
        seen.append(torch.get_num_threads())
        return n

    monkeypatch.setattr(loop, "auto_cpu_threads", spy)
    monkeypatch.setattr(loop.Trainer, "_announce_model", announce)
    torch.set_num_threads(2)
    cfg = TrainConfig(
        model="mlp",
        dataset="synthetic",
        synthetic_shape=[1, 8, 8],
        synthetic_samples=64,
        batch_size=16,
        epochs=1,
        eval=False,
        device="cpu",
        precision="fp32",
        cpu_threads=0,
    )
    run_training(cfg, TrainOptions(output=tmp_path, handle_signals=False, dry_run=True))
    assert asked and asked[0][0] == "cpu" and asked[0][2] == 16 * 64
    assert seen == [1 if expected == 1 else 2]
