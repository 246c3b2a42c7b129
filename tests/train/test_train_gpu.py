"""On a real NVIDIA GPU (marker ``gpu``): `make test-gpu` runs these; `make test` deselects them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_trains_on_cuda(tmp_path: Path, train_cli: Callable[..., Result], precision: str) -> None:
    out = tmp_path / "out"
    result = train_cli(
        "--device",
        "cuda",
        "--precision",
        precision,
        "--epochs",
        "2",
        "--channels-last",
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    expected = (
        "fp16" if precision == "fp16" else ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    )
    assert summary["precision"] == expected
    assert summary["peak_memory_bytes"] > 0
    assert summary["eval"]["accuracy"] > 0.8


def test_selftest_passes_for_an_nvidia_profile(
    tmp_path: Path, train_cli: Callable[..., Result]
) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("name: g\nhardware:\n  accelerator: nvidia\n")
    result = train_cli("--selftest", "--config", str(profile))
    assert result.exit_code == 0, result.output
    assert "compute capability" in result.stdout and "selftest ok" in result.stdout
