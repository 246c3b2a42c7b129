"""doctor against recorded nvidia-smi outputs (tests/data/nvidia-smi), no engine needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aibuild import knowledge as kb
from aibuild.doctor import (
    FAIL,
    INFO,
    OK,
    WARN,
    SmiError,
    diagnose,
    driver_at_least,
    format_report,
    parse_nvidia_smi,
    profile_checks,
    pulls_zstd,
    zstd_check,
)
from aibuild.engine import EngineFacts
from aibuild.errors import EngineError
from aibuild.profile.resolve import plan_for
from tests.unit.conftest import run_cli

SMI = Path(__file__).resolve().parents[1] / "data" / "nvidia-smi"


def recorded(name: str) -> str:
    return (SMI / name).read_text()


def no_engine() -> object:
    raise EngineError("cannot reach the Docker engine at unix:///x.sock\nStart a Docker engine")


def test_parse_eight_a100() -> None:
    gpus = parse_nvidia_smi(recorded("a100x8-550.csv"))
    assert len(gpus) == 8
    assert gpus[7].index == 7
    assert gpus[0].name == "NVIDIA A100-SXM4-80GB"
    first = gpus[0]
    assert (first.driver, first.compute_cap, first.memory) == ("550.54.15", "8.0", "81920 MiB")


def test_parse_old_driver_without_compute_cap() -> None:
    (gpu,) = parse_nvidia_smi(recorded("v100-no-compute-cap.csv"))
    assert gpu.compute_cap is None
    assert gpu.driver == "470.82.01"


def test_parse_driver_failure() -> None:
    with pytest.raises(SmiError, match="couldn't communicate with the NVIDIA driver"):
        parse_nvidia_smi(recorded("no-driver.txt"))


@pytest.mark.parametrize(
    ("arch", "cap", "covered"),
    [
        (("8.0",), "8.0", True),
        (("8.0",), "8.6", True),  # same major: SASS for 8.0 runs on 8.6
        (("8.0",), "9.0", False),
        (("8.0+PTX",), "9.0", True),  # PTX JIT-compiles forward
        (("8.0+PTX",), "7.5", False),
        (("7.5", "8.0", "9.0+PTX"), "12.0", True),
        (("9.0a",), "9.0", True),
        (("9.0a",), "9.1", False),
        (("10.0f",), "10.3", True),  # family-specific: the same major, minor >= 0
        (("10.0f",), "12.0", False),
        (("10.3f",), "10.0", False),
        (("8.6",), "8.0", False),
        ((), "8.0", False),
    ],
)
def test_arch_covers(arch: tuple[str, ...], cap: str, covered: bool) -> None:
    assert kb.arch_list_covers(arch, cap) is covered


def test_driver_versions() -> None:
    assert driver_at_least("550.54.15", "550.54.15")
    assert driver_at_least("550.67", "550.54.15")
    assert not driver_at_least("535.104.05", "550.54.15")
    assert driver_at_least("580.95.05", "525.60.13")


def statuses(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {c.name: c.status for c in checks}


def test_a100_profile_on_a100_host() -> None:
    plan = plan_for("gpu-a100")
    checks = profile_checks(plan, parse_nvidia_smi(recorded("a100x8-550.csv")), None)
    assert all(c.status == OK for c in checks), checks


def test_old_driver_fails_with_a_fix() -> None:
    plan = plan_for("gpu-a100")
    checks = profile_checks(plan, parse_nvidia_smi(recorded("a100-old-driver-535.csv")), None)
    failed = [c for c in checks if c.status == FAIL]
    assert [c.name for c in failed] == ["driver >= min"]
    assert "535.104.05 < 550.54.14" in failed[0].detail
    assert "upgrade the NVIDIA driver" in failed[0].fix


def test_uncovered_gpu_fails() -> None:
    plan = plan_for("gpu-a100")  # arch list 8.0: an H100 (9.0) is not covered
    checks = profile_checks(plan, parse_nvidia_smi(recorded("h100-580.csv")), None)
    assert statuses(checks)["gpu 0 arch"] == FAIL
    mixed = profile_checks(plan, parse_nvidia_smi(recorded("mixed-t4-a100.csv")), None)
    assert statuses(mixed)["gpu 0 arch"] == FAIL  # T4 is 7.5
    assert statuses(mixed)["gpu 1 arch"] == OK


def test_cpu_profile_needs_no_gpu() -> None:
    checks = profile_checks(plan_for("cpu"), [], "nvidia-smi not found")
    assert [c.status for c in checks] == [OK]


def test_gpu_profile_without_gpus_fails() -> None:
    checks = profile_checks(plan_for("gpu-h100"), [], "nvidia-smi not found")
    assert statuses(checks) == {"profile gpus": FAIL}


def test_diagnose_without_engine_reports_it() -> None:
    report = diagnose(
        plan_for("gpu-h100"), smi_output=recorded("h100-580.csv"), client_factory=no_engine
    )
    table = format_report(report)
    assert statuses(report.checks)["engine"] == FAIL
    assert "cannot reach the Docker engine" in table
    assert "fix: Start a Docker engine" in table
    assert "NVIDIA H100 80GB HBM3, compute capability 9.0" in table
    assert not report.ok
    assert "NOT ready for gpu-h100" in table


def test_cli_with_recorded_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIBUILD_NVIDIA_SMI_OUTPUT", str(SMI / "a100-old-driver-535.csv"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/aibuild-doctor.sock")
    result = run_cli(["doctor", "gpu-a100", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["gpus"][0]["driver"] == "535.104.05"
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["driver >= min"]["status"] == FAIL
    assert by_name["gpu 0 arch"]["status"] == OK
    assert by_name["engine"]["status"] == FAIL


def test_cli_missing_nvidia_smi_is_not_a_failure_without_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIBUILD_NVIDIA_SMI", str(tmp_path / "no-such-nvidia-smi"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/aibuild-doctor.sock")
    result = run_cli(["doctor"])
    assert "no-such-nvidia-smi not found" in result.stdout
    assert "nvidia driver" in result.stdout
    assert result.exit_code == 1  # only because the engine is unreachable


def _facts(version: str, os_name: str = "Debian GNU/Linux 12 (bookworm)") -> EngineFacts:
    return EngineFacts(version=version, api_version="1.45", store="classic", driver="overlay2",
                       os=os_name)  # fmt: skip


@pytest.mark.parametrize(
    ("version", "pulls"),
    [
        ("20.10.24+dfsg1", False),  # Debian 12's docker.io
        ("22.06.0-beta.0", False),
        ("23.0.0", True),  # the release that added zstd pulls
        ("26.1.5+dfsg1", True),  # Debian 13's
        ("29.0.1", True),
        ("unknown", None),
    ],
)
def test_which_engines_pull_zstd(version: str, pulls: bool | None) -> None:
    assert pulls_zstd(_facts(version)) is pulls


def test_podman_is_not_judged_by_its_own_version() -> None:
    assert pulls_zstd(_facts("4.3.1", "podman")) is None


def test_zstd_line_warns_only_when_the_profile_pushes_zstd() -> None:
    gzip_plan = plan_for("cpu")
    zstd_plan = plan_for("cpu", ("image.compression=zstd",))
    old, new = _facts("20.10.24+dfsg1"), _facts("26.1.5+dfsg1")
    assert zstd_check(old, None).status == INFO
    assert zstd_check(old, gzip_plan).status == INFO
    warned = zstd_check(old, zstd_plan)
    assert warned.status == WARN
    assert "20.10.24+dfsg1 pulls gzip layers only (zstd needs Docker 23.0+)" in warned.detail
    assert "--compression gzip" in warned.fix
    assert zstd_check(new, zstd_plan).status == OK
    assert zstd_check(new, None).detail.startswith("yes: Docker 26.1.5+dfsg1 pulls zstd")
