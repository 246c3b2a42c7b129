"""Hostile input to the profile, render, image, run and doctor commands: one clear line,
the right exit code, no traceback, bounded memory and time, and nothing of the user's lost.

Every case runs the real CLI in a child process (``python -m aibuild``) under an address
space limit, with an engine address that does not answer: none of these may need one.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MEMORY_LIMIT = 1 << 30  # 1 GiB of address space: aibuild's CLI needs about a tenth
TIME_LIMIT = 60.0
NO_ENGINE = "tcp://127.0.0.1:9"  # discard port: nothing answers


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, memory-limited, timed; asserts it ended in time and without a traceback."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        cwd=cwd,
        env={**os.environ, "DOCKER_HOST": NO_ENGINE, **env},
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert time.monotonic() - started < TIME_LIMIT
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def one_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single line of a failure (click's usage errors: the `Error:` line)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    if code == 2:
        lines = [ln for ln in lines if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(root.rglob("*"))
    }


# ------------------------------------------------------------------ files and directories


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "train.py").write_text("print('mine')\n")
    (root / "wheelhouse").mkdir()
    (root / "wheelhouse" / "mine-1.0-py3-none-any.whl").write_bytes(b"PK")
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "requirements.txt").write_text("numpy\n")
    return root


@pytest.mark.parametrize("command", ["render", "image"])
def test_a_directory_holding_others_files_is_refused_and_kept(tmp_path: Path, command: str) -> None:
    root = project(tmp_path)
    before = snapshot(root)
    option = "-o" if command == "render" else "--context-dir"
    result = cli(command, "cpu", option, ".", cwd=root)
    line = one_error(result)
    assert "not empty and is not a build context aibuild wrote" in line
    assert snapshot(root) == before  # nothing deleted, nothing overwritten


def test_an_earlier_render_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    assert cli("render", "cpu", "-o", str(out)).returncode == 0
    (out / "constraints.txt").write_text("stale==1\n")  # a file an earlier render wrote
    result = cli("render", "cpu", "-o", str(out), "--set", "training.epochs=3")
    assert result.returncode == 0, result.stderr
    assert not (out / "constraints.txt").exists()
    assert "epochs: 3" in (out / "profile.yaml").read_text()


@pytest.mark.parametrize("kind", ["file", "symlink", "user-dockerfile"])
def test_other_outputs_are_refused(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("keep me\n")
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere")
    else:
        out.mkdir()
        (out / "Dockerfile").write_text("FROM debian\n# my own\n")
    before = snapshot(tmp_path)
    one_error(cli("render", "cpu", "-o", str(out)), code=2 if kind == "file" else 1)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ profiles


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def billion_laughs(levels: int, width: int) -> str:
    lines = ["name: bomb", 'l0: &l0 ["ha"]']
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * width)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (billion_laughs(9, 9), "expands to more than"),  # 9**8 values: never finished before
        ("name: deep\nx: " + "[" * 3000 + "]" * 3000 + "\n", "nests deeper than"),
        ("name: big\ndescription: " + "x" * (2 << 20) + "\n", "larger than"),
        ("name: key\n? [a, b]\n: 1\n", "keys must be strings"),
    ],
    ids=["alias-bomb", "deep", "huge", "complex-key"],
)
@pytest.mark.parametrize("command", ["check", "render"])
def test_hostile_yaml_is_one_line(tmp_path: Path, text: str, says: str, command: str) -> None:
    profile = write(tmp_path, "p.yaml", text)
    assert says in one_error(cli(command, str(profile)))


def test_alias_bomb_in_set_is_one_line() -> None:
    bomb = "&a [" + ",".join(["x"] * 9) + "]"
    value = "[" + ",".join(["*a"] * 9) + "]"
    nested = f"[{bomb}, " + ", ".join([value] * 400) + "]"
    line = one_error(cli("check", "cpu", "--set", f"software.env={{A: {nested}}}"))
    assert "expands to more than" in line or "must be" in line


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(levels=st.integers(2, 12), width=st.integers(2, 12))
def test_alias_expansion_is_bounded(tmp_path: Path, levels: int, width: int) -> None:
    """Whatever the shape, loading stops at the bound: small ones load, big ones fail."""
    from aibuild.errors import ProfileError
    from aibuild.profile.load import MAX_VALUES, load_profile

    profile = write(tmp_path, "bomb.yaml", billion_laughs(levels, width))
    # values once aliases are expanded: the top mapping, `name`, then each list l_i
    # (itself plus `width` copies of l_{i-1}; l0 is a list of one string)
    sizes = [2]
    for _ in range(1, levels):
        sizes.append(1 + width * sizes[-1])
    expanded = 2 + sum(sizes)
    started = time.monotonic()
    try:
        load_profile(str(profile))
        loaded = True
    except ProfileError as exc:
        loaded = False
        assert "expands to more than" in str(exc)
    assert time.monotonic() - started < 5
    assert loaded == (expanded <= MAX_VALUES)


def test_a_child_profile_is_named_after_its_file_not_its_parent(tmp_path: Path) -> None:
    child = write(tmp_path, "myexp.yaml", "extends: gpu-h100\ntraining:\n  epochs: 3\n")
    result = cli("check", str(child))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("myexp: valid")
    assert "aibuild:myexp-torch" in result.stdout  # not the parent's tag
    named = write(tmp_path, "other.yaml", "extends: gpu-h100\nname: exp2\n")
    assert "aibuild:exp2-torch" in cli("check", str(named)).stdout


def test_a_file_name_that_is_no_name_needs_a_name(tmp_path: Path) -> None:
    child = write(tmp_path, "My Experiment.yaml", "extends: cpu\n")
    assert "add `name: ...`" in one_error(cli("check", str(child)))


def test_profile_errors_come_before_the_engine() -> None:
    line = one_error(cli("image", "cpu", "--set", "software.cuda=banana"))
    assert "software.cuda" in line and "engine" not in line


# ------------------------------------------------------------------ values that reach the engine


@pytest.mark.parametrize(
    "args",
    [
        ["--gpus", "99999999999999999999"],
        ["--gpus", "device=" + ",".join(["0"] * 2000)],
        ["--shm-size", "999999999999g"],
        ["--shm-size", "16x"],
        ["--grace", "nan"],
        ["--grace", "inf"],
        ["--grace", "-1"],
        ["--nproc-per-node", "100000"],
        ["--env", "=x"],
        ["--label", "a b=c"],
    ],
    ids=lambda a: " ".join(a)[:30],
)
def test_run_options_out_of_range_are_usage_errors(args: list[str]) -> None:
    line = one_error(cli("run", "cpu", *args), code=2)
    assert "Invalid value" in line


@pytest.mark.parametrize(
    "setting",
    [
        "run.shm_size=999999999999g",
        "hardware.gpus=99999999999999",
        "run.gpus=99999999999",
        "run.gpus=device=0,99999",
    ],
)
def test_profile_values_out_of_range_are_profile_errors(setting: str) -> None:
    line = one_error(cli("check", "cpu", "--set", setting))
    assert "error:" in line
    assert any(bound in line for bound in ("at most", "up to", "more than", "0 to"))


def test_a_long_set_item_is_shortened_in_the_message() -> None:
    line = one_error(cli("check", "cpu", "--set", "x" * 100_000))
    assert len(line) < 300


# ------------------------------------------------------------------ doctor


@pytest.mark.parametrize("kind", ["not-utf8", "missing", "directory", "huge"])
def test_doctor_with_a_bad_recorded_nvidia_smi_output(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "smi.csv"
    if kind == "not-utf8":
        path.write_bytes(b"NVIDIA A100\xff\xfe-SXM4, 550.54.15, 8.0, 81920 MiB\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_bytes(b"x" * (2 << 20))
    result = cli("doctor", "gpu-a100", AIBUILD_NVIDIA_SMI_OUTPUT=str(path))
    assert result.returncode == 1  # the engine is down: a failing check either way
    driver = [ln for ln in result.stdout.splitlines() if ln.startswith(("nvidia driver", "gpu 0"))]
    assert driver, result.stdout
    if kind != "not-utf8":
        assert "AIBUILD_NVIDIA_SMI_OUTPUT" in driver[0]
