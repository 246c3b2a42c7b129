"""Test tiers: markers assigned by where a test lives.

- tests/integration/**: marked ``docker`` (a real engine; ``make engine`` prepares it).
- ``gpu``-marked tests need a real NVIDIA GPU. ``make test`` deselects them
  (``-m "not gpu"``: this project's CI machines have no GPU); ``make test-gpu`` runs
  them on a GPU machine, where they fail, never skip, if no GPU works. A missing
  engine or registry is a failure too, never a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIR = TESTS_DIR / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.docker)
