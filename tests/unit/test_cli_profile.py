"""The profiles/check/render commands through click's CliRunner: output and exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import Result

from aibuild.profile.load import builtin_profiles
from tests.unit.conftest import invoke

GOLDENS = Path(__file__).resolve().parent / "goldens"


def assert_clean_failure(result: Result) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output, result.stderr)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("profiles", "check", "render", "image", "run", "doctor", "train"):
        assert f"  {command} " in result.output, command


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and "aibuild" in result.output


def test_profiles_lists_every_builtin() -> None:
    result = invoke("profiles")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == sorted(builtin_profiles())
    assert "_base" not in result.output
    rows = json.loads(invoke("profiles", "--json").output)
    assert [r["name"] for r in rows] == names and all(r["description"] for r in rows)


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_check_every_builtin_exits_0(name: str) -> None:
    result = invoke("check", name)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{name}: valid: ")


def test_check_b200_cuda_124_is_one_error_line() -> None:
    result = invoke("check", "gpu-b200", "--set", "software.cuda=12.4")
    assert_clean_failure(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("--set:1:1: error: ")
    assert "sm_100" in lines[0] and "CUDA >= 12.8" in lines[0]
    assert lines[0].endswith("(software.cuda)")
    assert result.stdout == ""


def test_check_json() -> None:
    result = invoke("check", "gpu-a100", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"valid", "errors", "warnings", "plan"}
    assert data["valid"] is True and data["errors"] == [] and data["warnings"] == []
    assert data["plan"]["cuda"] == "12.4" and data["plan"]["arch_list"] == ["8.0"]
    assert data["plan"]["image_ref"] == "aibuild:gpu-a100-torch2.5.1-cu124"


def test_check_json_invalid() -> None:
    result = invoke("check", "gpu-b200", "--set", "software.cuda=12.4", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False and data["plan"] is None
    (err,) = data["errors"]
    assert err["key"] == "software.cuda" and err["file"] == "--set" and err["severity"] == "error"


def test_check_json_warnings() -> None:
    data = json.loads(invoke("check", "gpu-a10g", "--json").stdout)
    assert data["valid"] is True and len(data["warnings"]) == 1
    assert data["warnings"][0]["key"] == "hardware.gpu"


def test_check_warnings_go_to_stderr_with_exit_0() -> None:
    result = invoke("check", "gpu-a10g")
    assert result.exit_code == 0
    assert "profiles/gpu-a10g.yaml:5:8: warning:" in result.stderr


def test_check_invalid_file_reports_file_line_col(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(
        "name: bad\nhardware:\n  accelerator: cpu\nrun:\n  shm_size: lots\n"
    )
    result = invoke("check", "bad.yaml")
    assert_clean_failure(result)
    assert "bad.yaml:5:13: error: " in result.stderr and "(run.shm_size)" in result.stderr


def test_check_malformed_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("name: bad\nsoftware: {pip: [a\n")
    result = invoke("check", "bad.yaml")
    assert_clean_failure(result)
    assert result.stderr.startswith("bad.yaml:") and "invalid YAML" in result.stderr


@pytest.mark.parametrize("command", ["check", "render"])
def test_missing_profile_is_exit_1(command: str) -> None:
    result = invoke(command, "no-such-profile")
    assert_clean_failure(result)
    assert "not found" in result.stderr


@pytest.mark.parametrize("command", ["check", "render"])
def test_bad_set_is_exit_1(command: str) -> None:
    result = invoke(command, "cpu", "--set", "software.torch")
    assert_clean_failure(result)
    assert "expected KEY.PATH=VALUE" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["render"],
        ["nosuchcommand"],
        ["check", "cpu", "--bogus"],
        ["render", "cpu", "--wheelhouse", "/no/such/dir"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_render_prints_the_golden() -> None:
    result = invoke("render", "gpu-a100")
    assert result.exit_code == 0
    assert result.stdout == (GOLDENS / "gpu-a100.Dockerfile").read_text()


def test_render_invalid_is_exit_1() -> None:
    result = invoke("render", "gpu-b200", "--set", "software.cuda=12.4")
    assert_clean_failure(result)
    assert "sm_100" in result.stderr and result.stdout == ""


def test_render_output_dir_twice_is_identical(tmp_path: Path) -> None:
    def hashes() -> dict[str, str]:
        out = tmp_path / "ctx"
        return {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file()
        }

    first = invoke("render", "cpu", "-o", str(tmp_path / "ctx"))
    assert first.exit_code == 0 and "wrote the build context" in first.stderr
    a = hashes()
    assert invoke("render", "cpu", "-o", str(tmp_path / "ctx")).exit_code == 0
    assert hashes() == a and "Dockerfile" in a


def test_render_options_on_the_command_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    result = invoke(
        "render",
        "cpu",
        "--ca-cert",
        str(ca),
        "--find-links",
        "https://e.com/w",
        "--extra-index-url",
        "https://e.com/simple",
    )
    assert result.exit_code == 0
    assert "COPY build-ca.pem /tmp/aibuild-build/ca.pem" in result.stdout
    assert (
        "--find-links https://e.com/w" in result.stdout
        and "--extra-index-url https://e.com/simple" in result.stdout
    )


def test_render_template_dir(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile.j2").write_text(
        '{% extends "aibuild/Dockerfile.j2" %}{% block extra %}RUN echo hi\n{% endblock %}'
    )
    result = invoke("render", "cpu", "--template-dir", str(tmp_path))
    assert result.exit_code == 0 and "\nRUN echo hi\n" in result.stdout


def test_render_bad_template_dir_is_exit_1(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile.j2").write_text("{% block %}")
    result = invoke("render", "cpu", "--template-dir", str(tmp_path))
    assert_clean_failure(result)
