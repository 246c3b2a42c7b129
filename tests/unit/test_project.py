"""A profile's `project:` and `dev:`: parsing, validation, the plan, the rendered layers and
the build context (no engine needed)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aibuild import labels
from aibuild.errors import ProfileError
from aibuild.image.context import project_files
from aibuild.image.render import render_dockerfile, requirements_text, write_context
from aibuild.image.wheelhouse import requirements as wheelhouse_requirements
from aibuild.profile.load import Profile, load_profile
from aibuild.profile.plan import BuildPlan, RenderOptions
from aibuild.profile.project import (
    RequirementsError,
    parse_pyproject,
    parse_requirements_txt,
    read_requirements,
)
from aibuild.profile.resolve import image_requirements, plan_for, validate
from aibuild.profile.schema import split_command
from tests.unit.conftest import dfparse, hadolint, invoke, one_clean_line
from tests.unit.test_hostile import HOSTILE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mnist"


def project(tmp_path: Path, section: str, files: dict[str, str] | None = None) -> Path:
    """A profile extending cpu, with SECTION, in a folder holding FILES; its path."""
    for name, text in (files or {"train.py": "print('hi')\n"}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    profile = tmp_path / "aibuild.yaml"
    profile.write_text(f"name: proj\nextends: cpu\n{section}")
    return profile


def plan_of(profile: Path, *sets: str) -> BuildPlan:
    return plan_for(str(profile), sets)


# --------------------------------------------------------------------------- requirements


def test_requirements_txt_as_pip_reads_it() -> None:
    text = (
        "# a comment\n"
        "numpy>=1.26  # why\n"
        "\n"
        "scipy \\\n"
        "  ==1.14.0\n"
        'tomli; python_version < "3.11"\n'
        "pkg[extra]~=2.0\n"
    )
    assert parse_requirements_txt(text, "r.txt") == [
        "numpy>=1.26",
        "scipy==1.14.0",
        'tomli; python_version < "3.11"',
        "pkg[extra]~=2.0",
    ]


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("numpy\n-r other.txt\n", 2, "pip options are not supported"),
        ("numpy==1.0 --hash=sha256:00\n", 1, "pip options are not supported"),
        ("-e .\n", 1, "pip options are not supported"),
        ("ok\nnumpy >>= 2\n", 2, "not a PEP 508 requirement"),
        ("a\nb\n\nc d\n", 4, "not a PEP 508 requirement"),
    ],
)
def test_a_requirements_file_that_does_not_parse_names_its_line(
    text: str, line: int, says: str
) -> None:
    with pytest.raises(RequirementsError) as caught:
        parse_requirements_txt(text, "req.txt")
    assert str(caught.value).startswith(f"req.txt:{line}: ") and says in str(caught.value)
    # the file is not the profile's own: its lines are never quoted back
    assert not any(part in str(caught.value) for part in ("other.txt", "sha256", ">>=", "c d"))


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_bytes("\ufeffnumpy\r\nrich\r\n".encode())
    assert read_requirements(path) == ["numpy", "rich"]


def test_pyproject_dependencies() -> None:
    text = '[project]\nname = "x"\ndependencies = ["numpy>=2", "rich"]\n'
    assert parse_pyproject(text, "pyproject.toml") == ["numpy>=2", "rich"]
    assert parse_pyproject('[project]\nname = "x"\n', "p") == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[project\n", "invalid TOML"),
        ('[tool.x]\na = "b"\n', "no [project] table"),
        ('[project]\ndynamic = ["dependencies"]\n', "dynamic"),
        ('[project]\ndependencies = ["numpy", "nu mpy"]\n', "dependencies[1]"),
        ("[project]\ndependencies = 3\n", "must be a list"),
    ],
)
def test_a_pyproject_that_does_not_parse(text: str, says: str) -> None:
    with pytest.raises(RequirementsError, match=r"^p\.toml: .*") as caught:
        parse_pyproject(text, "p.toml")
    assert says in str(caught.value)


# --------------------------------------------------------------------------- command


def test_command_is_argv_or_one_string_split_like_a_shell() -> None:
    assert split_command("python train.py --name 'a b' \"c d\"") == [
        "python",
        "train.py",
        "--name",
        "a b",
        "c d",
    ]
    assert split_command(["python", "-c", "print('$HOME')"]) == ["python", "-c", "print('$HOME')"]
    for bad in ("", "python 'unclosed", [], ["python", 3], {"a": 1}, ["ok", "new\nline"]):
        with pytest.raises(ValueError):
            split_command(bad)


# --------------------------------------------------------------------------- the plan


def test_the_example_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # relative to the profile file, not the current directory
    plan = plan_for(str(EXAMPLE / "aibuild.yaml"))
    assert plan.project is not None and plan.dev_jupyter
    assert plan.project.path == str(EXAMPLE)
    assert plan.project.command == ("python", "train.py", "--epochs", "5")
    assert plan.project.requirements == ("numpy>=1.26",)  # torch>=2.3 admits 2.13.0: left out
    assert "numpy>=1.26" in image_requirements(plan)
    assert plan.dev_image_ref == f"{plan.image_ref}-dev"
    assert json.loads(json.dumps(plan.to_dict()))["project"]["workdir"] == "/workspace"


def test_requirements_join_the_image_list_and_the_wheelhouse(tmp_path: Path) -> None:
    profile = project(
        tmp_path,
        "software:\n  pip: [rich]\nproject:\n  requirements: req.txt\ndev:\n  jupyter: true\n",
        {"req.txt": "numpy\nclick>=8.1.3\nrich\n"},
    )
    plan = plan_of(profile)
    assert image_requirements(plan) == [
        "click>=8.1.3",
        "numpy",
        "packaging>=23",
        "pyyaml>=6.0",
        "rich",
    ]
    rendered = requirements_text(plan)
    assert "numpy" in rendered and "project's requirements" in rendered
    listed = wheelhouse_requirements(plan)
    assert listed[0] == "torch==2.13.0" and "numpy" in listed
    assert any(r.startswith("jupyterlab") for r in listed)
    assert not any(r.startswith("jupyterlab") for r in image_requirements(plan))


def test_the_profile_hash_follows_requirements_not_code(tmp_path: Path) -> None:
    profile = project(tmp_path, "project:\n  requirements: req.txt\n", {"req.txt": "numpy\n"})
    first = plan_of(profile)
    (tmp_path / "train.py").write_text("print('edited')\n")
    (tmp_path / "req.txt").write_text("numpy  # with a comment\n")
    assert plan_of(profile).profile_hash == first.profile_hash
    (tmp_path / "req.txt").write_text("numpy\nrich\n")
    assert plan_of(profile).profile_hash != first.profile_hash


def test_profiles_without_the_new_keys_hash_as_before() -> None:
    # the golden Dockerfiles carry the hash: test_goldens checks every built-in profile
    assert plan_for("cpu").project is None and not plan_for("cpu").dev_jupyter


@pytest.mark.parametrize(
    ("requirement", "says"),
    [
        ("torch<2", "excludes the image's torch 2.13.0"),
        ("aibuild", "aibuild is in every image already"),
        ("click==7.0", "conflicts with the aibuild runtime"),
    ],
)
def test_requirements_the_image_cannot_take(tmp_path: Path, requirement: str, says: str) -> None:
    profile = project(tmp_path, "project:\n  requirements: r.txt\n", {"r.txt": requirement})
    line = one_clean_line(invoke("check", str(profile)))
    assert says in line and "(project.requirements)" in line and "r.txt" in line


def test_a_missing_project_path_is_one_line(tmp_path: Path) -> None:
    profile = project(tmp_path, "project:\n  path: ../nowhere\n")
    line = one_clean_line(invoke("check", str(profile)))
    assert "project folder ../nowhere not found" in line and line.endswith("(project.path)")
    assert line.startswith(f"{profile}:4:") or ":4:" in line  # where it was written
    result = invoke("image", str(profile))  # before the engine is contacted
    assert "project folder ../nowhere not found" in one_clean_line(result)


def test_a_requirements_file_that_does_not_parse_is_one_line(tmp_path: Path) -> None:
    profile = project(tmp_path, "project:\n  requirements: r.txt\n", {"r.txt": "numpy\nnu mpy\n"})
    line = one_clean_line(invoke("check", str(profile)))
    assert "r.txt:2: not a PEP 508 requirement" in line and "nu mpy" not in line
    profile = project(tmp_path, "project:\n  requirements: missing.txt\n")
    assert "missing.txt does not exist" in one_clean_line(invoke("check", str(profile)))


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("project:\n  workdir: relative\n", "project.workdir"),
        ("project:\n  workdir: /opt/venv/x\n", "project.workdir"),
        ("project:\n  workdir: /work/$HOME\n", "project.workdir"),
        ("project:\n  workdir: /a/../etc\n", "project.workdir"),
        ('project:\n  command: "python \'x"\n', "project.command"),
        ("project:\n  command: []\n", "project.command"),
        ("project:\n  exclude: data\n", "project.exclude"),
        ("project:\n  patth: .\n", "project.patth"),
        ("dev:\n  jupyter: yes please\n", "dev.jupyter"),
    ],
)
def test_bad_project_values(tmp_path: Path, section: str, key: str) -> None:
    plan, diags = validate(load_profile(str(project(tmp_path, section))))
    assert plan is None
    assert key in {d.key for d in diags if d.severity == "error"}, [d.format() for d in diags]


def test_project_path_is_relative_to_the_file_that_sets_it(tmp_path: Path) -> None:
    (tmp_path / "team" / "code").mkdir(parents=True)
    (tmp_path / "team" / "code" / "train.py").write_text("")
    (tmp_path / "team" / "base.yaml").write_text("extends: cpu\nproject:\n  path: code\n")
    (tmp_path / "team" / "sub").mkdir()
    child = tmp_path / "team" / "sub" / "exp.yaml"
    child.write_text("extends: ../base.yaml\nproject:\n  command: python train.py\n")
    plan = plan_for(str(child))
    want = str((tmp_path / "team" / "code").resolve())
    assert plan.project is not None and plan.project.path == want


def test_git_source_labels_without_credentials(tmp_path: Path) -> None:
    profile = project(tmp_path, "project:\n  command: python train.py\n")
    assert plan_of(profile).project.labels == ()  # type: ignore[union-attr]
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    remote = "https://user:secret@example.com/team/proj.git"
    subprocess.run([*git, "remote", "add", "origin", remote], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    found = dict(plan_of(profile).project.labels)  # type: ignore[union-attr]
    assert found == {
        labels.OCI_REVISION: head,
        labels.OCI_SOURCE: "https://example.com/team/proj.git",
    }


# --------------------------------------------------------------------------- rendering


def layers(dockerfile: str) -> list[str]:
    """The instructions, continuation lines joined."""
    joined = dockerfile.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line and line[0].isupper()]


def stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text."""
    found = {}
    for part in dockerfile.split("\nFROM ")[1:]:
        found[part.splitlines()[0].split(" AS ")[1]] = part
    return found


def test_the_code_is_the_last_layer_and_the_command_the_entrypoint(tmp_path: Path) -> None:
    profile = project(
        tmp_path,
        'project:\n  command: [python, train.py, "it\'s \\"quoted\\" $(x)"]\n  workdir: /srv/app\n',
    )
    text = render_dockerfile(plan_of(profile))
    steps = layers(text)
    assert steps[-1] == "COPY --chown=1000:1000 project/ /srv/app/"
    assert steps[-2] == 'ENTRYPOINT ["python", "train.py", "it\'s \\"quoted\\" $(x)"]'
    assert steps[-3] == "WORKDIR /srv/app"
    assert steps.index("COPY profile.yaml /etc/aibuild/profile.yaml") < len(steps) - 4
    torch = next(i for i, s in enumerate(steps) if "torch==" in s)
    reqs = next(i for i, s in enumerate(steps) if "-r /tmp/aibuild-build/requirements.txt" in s)
    assert torch < reqs < steps.index(steps[-1])
    assert "AS dev" not in text and "AS train" not in text


def test_without_a_command_the_trainer_stays_the_entrypoint(tmp_path: Path) -> None:
    text = render_dockerfile(plan_of(project(tmp_path, "project:\n  path: .\n")))
    assert 'ENTRYPOINT ["aibuild", "train"]' in text and "COPY --chown=1000:1000 project/" in text


BUILD_SITE = RenderOptions(
    wheelhouse="/tmp",
    ca_cert="/etc/hosts",
    constraints=("numpy==2.0.0",),
    reproducible=True,
    source_date_epoch=1,
)


@pytest.mark.parametrize("options", [RenderOptions(), BUILD_SITE])
def test_dev_is_a_stage_of_its_own_and_hadolint_clean(options: RenderOptions) -> None:

    plan = plan_for(str(EXAMPLE / "aibuild.yaml"), options=options)
    text = render_dockerfile(plan, options)
    found = stages(text)
    train, dev = found["train"], found["dev"]
    assert "jupyterlab" not in train and "jupyterlab" in dev
    assert train.startswith(found["dev"].split(" AS ")[0])  # both on the same environment
    assert layers(train)[-1] == layers(dev)[-1] == "COPY --chown=1000:1000 project/ /workspace/"
    result = hadolint(text)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_the_context_holds_the_project_without_what_is_left_out(tmp_path: Path) -> None:
    files = {
        "train.py": "",
        "pkg/model.py": "",
        "pkg/__pycache__/model.cpython-311.pyc": "",
        ".git/HEAD": "ref",
        ".aibuild/builds/latest.json": "{}",
        "aibuild-output/run/model.pt": "",
        "data/big.bin": "x",
        "data/keep.txt": "",
        "notes.md": "",
        ".dockerignore": "*.md\n",
    }
    profile = project(tmp_path, "project:\n  exclude: [data, '!data/keep.txt']\n", files)
    (tmp_path / "link.py").symlink_to("train.py")
    got = project_files(tmp_path, ("data", "!data/keep.txt"))
    assert {"train.py", "pkg/model.py", "link.py", "data/keep.txt", ".dockerignore"} <= set(got)
    left_out = (".git", ".aibuild", "aibuild-output", "data/big.bin", "notes.md", "pkg/__pycache__")
    assert not set(left_out) & set(got)
    context = write_context(plan_of(profile), tmp_path.parent / "ctx")
    copied = context / "project"
    assert (copied / "pkg" / "model.py").is_file() and (copied / "link.py").is_symlink()
    assert not (copied / ".git").exists() and not (copied / "data" / "big.bin").exists()
    assert (copied / "data" / "keep.txt").is_file()
    shutil.rmtree(context)


def test_a_context_dir_inside_the_project_is_not_copied_into_itself(tmp_path: Path) -> None:
    profile = project(tmp_path, "project:\n  path: .\n")
    context = write_context(plan_of(profile), tmp_path / "ctx")
    assert not (context / "project" / "ctx").exists()
    assert (context / "project" / "train.py").is_file()


def test_overrides_reach_the_project(tmp_path: Path) -> None:
    profile = project(tmp_path, "")
    plan = plan_of(profile, "project.command=python train.py", "project.path=" + str(tmp_path))
    assert plan.project is not None and plan.project.command == ("python", "train.py")


def test_a_bad_project_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError):
        plan_of(project(tmp_path, "project:\n  path: nowhere\n"))


# --------------------------------------------------------------------------- hostile values


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _hostile_plan(section: dict[str, object]) -> BuildPlan | None:
    """The plan for cpu plus ``section`` as project: (its path defaults to a folder of one
    file), straight from data as test_hostile does: no YAML round trip to change a value."""
    with tempfile.TemporaryDirectory() as tmp, working_directory(Path(tmp)):  # no git here
        (Path(tmp) / "train.py").write_text("")
        data = copy.deepcopy(load_profile("cpu").data)
        data["project"] = {"path": tmp, **section}
        try:
            plan, _ = validate(Profile(name="hostile", data=data, files=["hostile.yaml"]))
        except ProfileError:
            return None
        return plan


CLEAN_PROJECT = {"command": ["python", "train.py"], "workdir": "/workspace/app"}
CLEAN_PROJECT_PLAN = _hostile_plan(CLEAN_PROJECT)
assert CLEAN_PROJECT_PLAN is not None
CLEAN_PROJECT_TEXT = render_dockerfile(CLEAN_PROJECT_PLAN)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["command-arg", "command-string", "workdir", "path", "exclude"]),
    value=HOSTILE,
)
def test_hostile_project_values_never_escape(where: str, value: str) -> None:
    section: dict[str, object] = dict(CLEAN_PROJECT)
    if where == "command-arg":
        section["command"] = ["python", value]
    elif where == "command-string":
        section["command"] = f"python {value}"
    elif where == "exclude":
        section["exclude"] = [value]
    else:
        section[where] = value
    plan = _hostile_plan(section)
    if plan is None:
        return
    text = render_dockerfile(plan)
    assert dfparse.keywords(text) == dfparse.keywords(CLEAN_PROJECT_TEXT)
    assert text.count("\n") == CLEAN_PROJECT_TEXT.count("\n")
    assert plan.project is not None
    (entrypoint,) = [a for w, a in dfparse.instructions(text) if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == list(plan.project.command)
    if where == "command-arg":
        assert plan.project.command == ("python", value)
    (workdir,) = [a for w, a in dfparse.instructions(text) if w == "WORKDIR"]
    assert workdir == plan.project.workdir
