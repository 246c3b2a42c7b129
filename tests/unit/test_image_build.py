"""Build arguments, proxies, and the image command's usage errors (no engine needed)."""

from __future__ import annotations

import pytest

from aibuild.image.build import parse_build_args, proxy_build_args
from tests.unit.conftest import run_cli


def test_proxies_both_cases() -> None:
    env = {"https_proxy": "http://proxy:3128", "NO_PROXY": "localhost", "HOME": "/root"}
    assert proxy_build_args(env) == {
        "HTTPS_PROXY": "http://proxy:3128",
        "https_proxy": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "no_proxy": "localhost",
    }
    assert proxy_build_args({}) == {}


def test_build_args() -> None:
    assert parse_build_args(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_build_args(["novalue"])


def test_bad_build_arg_is_a_usage_error() -> None:
    result = run_cli(["image", "cpu", "--build-arg", "1X=2"])
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


def test_unreachable_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    result = run_cli(["image", "cpu"])
    assert result.exit_code == 1
    assert "cannot reach the Docker engine at tcp://127.0.0.1:1" in result.output
    assert "Traceback" not in result.output
