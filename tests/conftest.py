"""Test tiers: markers assigned by where a test lives.

- tests/integration/**: marked ``docker`` (a real engine; ``make engine`` prepares it).
- ``gpu``-marked tests need a real NVIDIA GPU. Where ``nvidia-smi -L`` lists none
  they are skipped with that reason, unless AIBUILD_TEST_REQUIRE_GPU=1 (a GPU
  runner), where a missing GPU fails them instead. Everything else always runs:
  a missing engine or registry is a failure, never a skip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIR = TESTS_DIR / "integration"


@functools.cache
def _host_has_gpu() -> bool:
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False
    try:
        result = subprocess.run(
            [nvidia_smi, "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    require_gpu = os.environ.get("AIBUILD_TEST_REQUIRE_GPU") == "1"
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.docker)
        if item.get_closest_marker("gpu") is None:
            continue
        if require_gpu:
            continue  # run; a missing GPU fails the test on a GPU runner
        if not _host_has_gpu():
            item.add_marker(
                pytest.mark.skip(reason="needs a real NVIDIA GPU (nvidia-smi -L lists none)")
            )
