"""hadolint finds nothing in any built-in profile's rendered Dockerfile."""

from __future__ import annotations

import pytest

from aibuild.image.render import render_dockerfile
from aibuild.profile.load import builtin_profiles
from aibuild.profile.plan import RenderOptions
from aibuild.profile.resolve import plan_for
from tests.unit.conftest import hadolint


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_builtin_dockerfile_passeshadolint(name: str) -> None:
    result = hadolint(render_dockerfile(plan_for(name)))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_build_site_options_passhadolint() -> None:
    options = RenderOptions(
        wheelhouse="/tmp",
        ca_cert="/etc/hosts",
        find_links=("https://example.com/w",),
        extra_index_urls=("https://example.com/simple",),
        constraints=("numpy==2.0.0",),
        reproducible=True,
        source_date_epoch=1700000000,
    )
    result = hadolint(render_dockerfile(plan_for("gpu-a100", options=options), options))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile() -> None:
    result = hadolint("FROM ubuntu\nRUN cd /tmp && echo hi\n")
    assert result.returncode != 0 and "DL" in result.stdout
