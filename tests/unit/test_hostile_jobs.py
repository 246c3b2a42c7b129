"""Hostile input to export, submit, lock, diff, run, wheelhouse, devcontainer and a
profile's project: one class of fault per section (issue 16). Every case runs the real CLI
in a child process under a memory limit (``test_hostile_cli.cli``), with an engine address
that does not answer: none of these may need one.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from aibuild import bounds, labels
from aibuild.run.config import ContainerOptions, container_config
from aibuild.run.owner import is_orphan, owner_label
from aibuild.vcs import without_credentials
from tests.unit.test_export_slurm import NODE_SCRIPT
from tests.unit.test_hostile_cli import cli, snapshot
from tests.unit.test_hostile_cli import one_error as _one_error

CPU = "cpu"


def one_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The failure's one line; export's note on the image's pinning is not a failure."""
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("aibuild: image ")]
    return _one_error(
        subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout, "\n".join(lines)
        ),
        code,
    )


def profile_with(tmp_path: Path, body: str, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "proj"
    root.mkdir(exist_ok=True)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "train.py").write_text("print('ok')\n")
    path = root / "p.yaml"
    path.write_text("extends: cpu\nname: p\n" + body)
    return path


# ------------------------------------------------------------ code runs from a generated script


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer", "docker"])
@pytest.mark.parametrize("key", ["A;touch x;B", "A B", "A\nB", "1A", "A-B", "A$(id)"])
def test_a_variable_name_that_is_no_name_is_refused(tmp_path: Path, runtime: str, key: str) -> None:
    result = cli("export", "slurm", CPU, "--runtime", runtime, "-e", f"{key}=2", cwd=tmp_path)
    assert "variable name" in one_error(result)
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("key", ["PATH", "BASH_ENV", "LD_PRELOAD", "SLURM_NTASKS", "UID"])
def test_pyxis_refuses_variables_that_change_the_script(key: str) -> None:
    line = one_error(cli("export", "slurm", CPU, "-e", f"{key}=/tmp/x"))
    assert key in line and "pyxis" in line
    # the other runtimes pass them to the container only
    assert cli("export", "slurm", CPU, "--runtime", "docker", "-e", f"{key}=/x").returncode == 0


def test_the_docker_runtime_has_no_heredoc() -> None:
    value = "x\nAIBUILD_NODE\ntouch pwned\n"
    result = cli("export", "slurm", CPU, "--runtime", "docker", "-e", f"K={value}")
    assert result.returncode == 0, result.stderr
    assert "<<" not in result.stdout
    match = NODE_SCRIPT.search(result.stdout)
    assert match, result.stdout
    (node_script,) = shlex.split(match.group(1))  # one word, the value inside it
    assert shlex.quote(f"K={value}") in node_script


def test_k8s_values_are_dollar_escaped() -> None:
    result = cli("export", "k8s", CPU, "-e", "K=$(SECRET)", "--", "--set", "$(HOME)")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    container = docs[1]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "K", "value": "$$(SECRET)"} in container["env"]
    assert container["args"][-1] == "$$(HOME)" and "$(NODE_RANK)" in container["args"]


# ------------------------------------------------------------ code on the host: wheels


@pytest.mark.parametrize(
    "requirement",
    [
        "pkg @ file:///tmp/pkg-1.0.tar.gz",
        "pkg @ git+https://example.com/p.git",
        "p @ https://x/p.zip",
    ],
)
def test_direct_references_are_refused_by_check(tmp_path: Path, requirement: str) -> None:
    profile = profile_with(tmp_path, f"software:\n  pip: [{requirement!r}]\n")
    assert "direct reference" in one_error(cli("check", str(profile)))
    allowed = profile_with(
        tmp_path, f"software:\n  allow_direct_references: true\n  pip: [{requirement!r}]\n"
    )
    assert cli("check", str(allowed)).returncode == 0


def test_direct_references_in_project_requirements_are_refused(tmp_path: Path) -> None:
    profile = profile_with(
        tmp_path,
        "project:\n  requirements: r.txt\n",
        {"r.txt": "numpy\nevil @ file:///tmp/evil.tar.gz\n"},
    )
    assert "direct reference" in one_error(cli("check", str(profile)))


def test_wheelhouse_never_builds_a_direct_reference(tmp_path: Path) -> None:
    sdist = tmp_path / "evil"
    sdist.mkdir()
    marker = tmp_path / "setup-ran"
    (sdist / "setup.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    profile = profile_with(
        tmp_path,
        f"software:\n  allow_direct_references: true\n  pip: ['evil @ file://{sdist}']\n",
    )
    result = cli("wheelhouse", str(profile), "-o", str(tmp_path / "wh"))
    assert "direct reference" in one_error(result)
    assert not marker.exists()


def test_wheelhouse_probes_an_unreachable_torch_index_once(tmp_path: Path) -> None:
    """PyTorch's index is asked once; when it does not answer it is left out of pip's
    command (not retried for every package), and torch must then be the plan's variant."""
    dead = "http://127.0.0.1:9"
    result = cli(
        "wheelhouse", CPU, "-o", str(tmp_path / "wh"),
        HTTPS_PROXY=dead, https_proxy=dead, PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="2",
        PIP_FIND_LINKS="", PIP_CONFIG_FILE="/dev/null",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("does not answer") == 1
    looking = [ln for ln in result.stderr.splitlines() if ln.startswith("Looking in indexes")]
    assert "leaving it out" in result.stderr
    assert all("download.pytorch.org" not in ln for ln in looking), looking


# ------------------------------------------------------------ a job mistaken for a killed run


def test_exported_jobs_carry_no_owner(tmp_path: Path) -> None:
    compose = cli("export", "compose", CPU)
    assert compose.returncode == 0, compose.stderr
    train = yaml.safe_load(compose.stdout)["services"]["train"]
    assert train["labels"] == {labels.EXPORTED: "compose"}
    slurm = cli("export", "slurm", CPU, "--runtime", "docker")
    assert labels.RUN_OWNER not in slurm.stdout and f"{labels.EXPORTED}=slurm" in slurm.stdout


def test_only_a_dead_run_of_this_user_on_this_host_is_an_orphan() -> None:
    done = subprocess.run(["true"], check=True)
    assert done.returncode == 0
    proc = subprocess.Popen(["sleep", "0"])
    label = owner_label(proc.pid)  # taken while it lives
    proc.wait()
    assert is_orphan(label)
    host, pid, start, uid = label.split(":")
    assert not is_orphan(f"{host}:{pid}:{start}")  # no uid: not written by this aibuild
    assert not is_orphan(f"{host}:{pid}:{start}:{int(uid) + 1}")  # another user's
    assert not is_orphan(f"other-{socket.gethostname()}:{pid}:{start}:{uid}")
    assert not is_orphan(owner_label())  # alive
    forged = dict(container_config(ContainerOptions(labels=((labels.RUN_OWNER, label),)), "i"))
    assert forged["labels"][labels.RUN_OWNER] != label  # a --label cannot forge one


# ------------------------------------------------------------ a file silently replaced


def test_export_refuses_to_replace_what_it_did_not_write(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "")
    mine = tmp_path / "notes.txt"
    mine.write_text("mine\n")
    link = tmp_path / "link.sh"
    link.symlink_to(mine)
    before = snapshot(tmp_path)
    for target, says in (
        (profile, "input of this command"),
        (mine, "did not write it"),
        (link, "symbolic link"),
        (tmp_path / "missing" / "job.sh", "does not exist"),
        (Path("/dev/full"), "not a regular file"),
        (Path("/proc/self/status"), "did not write it"),
        (Path("/proc/nonexistent-dir/x"), "does not exist"),
    ):
        line = one_error(cli("export", "slurm", str(profile), "-f", str(target)))
        assert says in line, line
    assert snapshot(tmp_path) == before
    job = tmp_path / "job.sbatch"
    for _ in range(2):  # its own file is replaced, atomically: nothing else left beside it
        assert cli("export", "slurm", str(profile), "-f", str(job)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(Path(p).name for p in before if "/" not in p), "job.sbatch"]
    )


@pytest.mark.parametrize("target", ["afile/x", "/dev/full", "p.yaml", "mine.json"])
def test_lock_output_is_checked_before_any_work(tmp_path: Path, target: str) -> None:
    profile = profile_with(tmp_path, "")
    (profile.parent / "afile").write_text("x")
    (profile.parent / "mine.json").write_text("{}")
    before = snapshot(profile.parent)
    line = one_error(cli("lock", str(profile), "-o", target, cwd=profile.parent))
    assert "lock file" in line
    assert snapshot(profile.parent) == before


def test_the_context_holds_copies_not_links(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n")
    out = tmp_path / "ctx"
    assert cli("render", str(profile), "-o", str(out)).returncode == 0
    copied = out / "project" / "train.py"
    assert copied.stat().st_nlink == 1
    copied.write_text("edited\n")
    assert (profile.parent / "train.py").read_text() == "print('ok')\n"


# ------------------------------------------------------------ a secret copied into the context


def test_default_excludes_apply_at_every_depth(tmp_path: Path) -> None:
    files = {
        "vendor/lib/.git/config": "url = https://user:token@example.com/x\n",
        "sub/.venv/bin/python": "",
        "sub/aibuild-output/model.pt": "",
        "old/Dockerfile": "# Generated by aibuild 0.1 from profile x\nFROM scratch\n",
        "old/secret.txt": "x",
        "vendor/lib/code.py": "",
    }
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n", files)
    out = tmp_path / "ctx"
    assert cli("render", str(profile), "-o", str(out)).returncode == 0
    kept = {p.relative_to(out / "project").as_posix() for p in (out / "project").rglob("*")}
    assert "vendor/lib/code.py" in kept
    assert not any(
        k.startswith(("vendor/lib/.git", "sub/.venv", "sub/aibuild", "old")) for k in kept
    )


@pytest.mark.parametrize("key", ["requirements", "path"])
def test_paths_outside_the_profiles_folder_are_refused(tmp_path: Path, key: str) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key.txt").write_text("TOPSECRET-LINE\n")
    value = "../secrets/key.txt" if key == "requirements" else "../secrets"
    profile = profile_with(tmp_path, f"project:\n  {key}: {value}\n")
    line = one_error(cli("check", str(profile)))
    assert "outside the profile's folder" in line and "TOPSECRET" not in line
    # a link inside the folder to a file outside is outside too
    (profile.parent / "link.txt").symlink_to(secrets / "key.txt")
    linked = profile_with(tmp_path, "project:\n  requirements: link.txt\n")
    assert "outside the profile's folder" in one_error(cli("check", str(linked)))
    # given on the command line, it is the caller's choice: read, but never quoted
    result = cli("check", str(profile), "--set", f"project.requirements={secrets / 'key.txt'}")
    assert "TOPSECRET" not in result.stderr + result.stdout


# ------------------------------------------------------------ unbounded input


def test_requirements_that_never_end_are_bounded(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n")
    fifo = profile.parent / "fifo.txt"
    os.mkfifo(fifo)
    for value, says in ((str(fifo), "not a regular file"), ("/dev/zero", "not a regular file")):
        line = one_error(cli("check", str(profile), "--set", f"project.requirements={value}"))
        assert says in line
    big = profile.parent / "big.txt"
    big.write_text("numpy\n" * 300_000)
    line = one_error(cli("check", str(profile), "--set", f"project.requirements={big}"))
    assert "larger than" in line


def test_many_dockerignore_patterns(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n")
    for i in range(300):
        (profile.parent / f"f{i}.py").write_text("")
    ignore = profile.parent / ".dockerignore"
    ignore.write_text("".join(f"nothing{i}/*.x\n" for i in range(9000)))
    assert cli("render", str(profile), "-o", str(tmp_path / "ctx")).returncode == 0
    ignore.write_text("".join(f"p{i}\n" for i in range(20000)))
    assert "patterns" in one_error(cli("render", str(profile), "-o", str(tmp_path / "ctx2")))


@pytest.mark.parametrize(
    "args",
    [
        ["run", CPU, "--nodes", "1000000000"],
        ["export", "slurm", CPU, "--nodes", "1000000000"],
        ["export", "k8s", CPU, "--nodes", "99999"],
        ["export", "slurm", CPU, "--mem", "100000000000000000000t"],
        ["export", "k8s", CPU, "--mem", "100000t"],
        ["export", "slurm", CPU, "--time", "99999-00:00:00"],
        ["export", "slurm", CPU, "--cpus", "10000000"],
        ["export", "slurm", CPU, "--nproc-per-node", "100000"],
    ],
)
def test_numbers_that_become_resources_are_bounded(args: list[str]) -> None:
    assert "out of bounds" in one_error(cli(*args))


# ------------------------------------------------------------ leaked networks


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "A", "x" * 60])
def test_run_nodes_names_are_plain_words(name: str) -> None:
    line = one_error(cli("run", CPU, "--nodes", "2", "--name", name))
    assert "--name" in line


# ------------------------------------------------------------ tracebacks


def test_a_dockerignore_that_is_not_utf8(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n")
    (profile.parent / ".dockerignore").write_bytes(b"\xff\xfe bad\n")
    assert "not UTF-8" in one_error(cli("render", str(profile), "-o", str(tmp_path / "c")))


def test_a_pyproject_nested_deep(tmp_path: Path) -> None:
    deep = "[project]\nname='x'\ndependencies = []\nx = " + "[" * 50_000 + "]" * 50_000 + "\n"
    profile = profile_with(
        tmp_path, "project:\n  requirements: pyproject.toml\n", {"pyproject.toml": deep}
    )
    assert "pyproject.toml" in one_error(cli("check", str(profile)))


def test_run_output_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    line = one_error(cli("run", CPU, "--output", str(tmp_path / "afile" / "sub")))
    assert "--output" in line


def test_diff_max_files_must_not_be_negative() -> None:
    one_error(cli("diff", "a", "b", "--max-files", "-1"), code=2)


# ------------------------------------------------------------ wrong mount or hidden tool


def test_devcontainer_data_cannot_add_mount_options(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n")
    data = tmp_path / "d,readonly=false"
    data.mkdir()
    line = one_error(cli("devcontainer", str(profile), "--data", str(data)))
    assert "devcontainer mount" in line
    assert not (profile.parent / ".devcontainer").exists()


def test_devcontainer_paths_are_not_expanded_by_the_tools(tmp_path: Path) -> None:
    work = tmp_path / "${localEnv:HOME}"  # the project's folder inside the workspace
    work.mkdir()
    profile = profile_with(work, "project:\n  command: python train.py\n")
    line = one_error(cli("devcontainer", str(profile), "--workspace", str(tmp_path)))
    assert "${" in line
    assert not (tmp_path / ".devcontainer").exists()


def test_a_users_devcontainer_json_is_not_shadowed(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "project:\n  command: python train.py\n")
    own = profile.parent / ".devcontainer.json"
    own.write_text('{"image": "mine"}\n')
    assert ".devcontainer.json" in one_error(cli("devcontainer", str(profile)))
    assert not (profile.parent / ".devcontainer").exists()


@pytest.mark.parametrize("workdir", ["/opt", "/", "/root", "/root/x"])
def test_workdirs_that_hide_the_image_are_refused(tmp_path: Path, workdir: str) -> None:
    profile = profile_with(
        tmp_path, f"project:\n  command: python train.py\n  workdir: {workdir}\n"
    )
    line = one_error(cli("check", str(profile)))
    assert "project.workdir" in line and "project.command" not in line


# ------------------------------------------------------------ small ones


def test_credentials_are_stripped_to_the_last_at() -> None:
    assert without_credentials("https://user:p@ss@host/x.git") == "https://host/x.git"
    assert without_credentials("https://host/a@b") == "https://host/a@b"


def test_a_missing_profile_file_is_not_an_image(tmp_path: Path) -> None:
    line = one_error(cli("run", "./missing.yaml", cwd=tmp_path))
    assert "not found" in line and "docker pull" not in line


def test_the_bounds_table_is_what_the_code_reads() -> None:
    assert bounds.BOUNDS["run_nodes"].high < bounds.BOUNDS["job_nodes"].high
    doc = Path(__file__).resolve().parents[2] / "docs" / "security.md"
    assert bounds.markdown_table() in doc.read_text(encoding="utf-8")


def test_wheelhouse_checks_every_requirement_has_its_wheel(tmp_path: Path) -> None:
    from aibuild.errors import BuildError
    from aibuild.image.wheelhouse import check_wheels, requirements
    from aibuild.profile.resolve import plan_for

    plan = plan_for(CPU)
    with pytest.raises(BuildError, match="no wheel for"):
        check_wheels(plan, tmp_path)  # pip said it succeeded; nothing is there
    for item in requirements(plan):
        name = item.split("=")[0].split("<")[0].split(">")[0].split(";")[0].split("[")[0]
        (tmp_path / f"{name.strip().replace('-', '_')}-1.0-py3-none-any.whl").write_bytes(b"")
    check_wheels(plan, tmp_path)
