"""The publishing commands' argument handling, without Docker (CliRunner)."""

from __future__ import annotations

from tests.unit.conftest import run_cli


def test_username_needs_password_stdin() -> None:
    result = run_cli(["push", "img", "--username", "me"])
    assert result.exit_code == 2
    assert "--password-stdin" in result.output


def test_password_stdin_needs_username() -> None:
    result = run_cli(["push", "img", "--password-stdin"], input="pw\n")
    assert result.exit_code == 2
    assert "needs --username" in result.output


def test_empty_password_on_stdin_is_an_error_not_a_traceback() -> None:
    result = run_cli(["push", "img", "--username", "me", "--password-stdin"], input="\n")
    assert result.exit_code == 1
    assert "nothing was read from stdin" in result.output


def test_image_publishing_options_are_offered() -> None:
    result = run_cli(["image", "--help"])
    assert result.exit_code == 0
    for option in ("--reproducible", "--locked", "--push", "--username", "--password-stdin"):
        assert option in result.output


def test_push_lock_diff_help() -> None:
    for command in ("push", "lock", "diff"):
        result = run_cli([command, "--help"])
        assert result.exit_code == 0, result.output
