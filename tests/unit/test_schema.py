"""The schema: unknown keys with did-you-mean, types, allowed values, every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from aibuild.errors import Diagnostic
from aibuild.profile import schema
from aibuild.profile.load import load_profile
from aibuild.profile.resolve import validate, validate_schema


def diags_for(tmp_path: Path, text: str) -> list[Diagnostic]:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return validate_schema(load_profile(str(path)))


def messages(diags: list[Diagnostic]) -> dict[str, str]:
    return {d.key: d.message for d in diags if d.severity == "error"}


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("nmae: x\n", "nmae", "did you mean 'name'?"),
        ("hardware:\n  acelerator: cpu\n", "hardware.acelerator", "did you mean 'accelerator'?"),
        ("software:\n  pyhton: '3.11'\n", "software.pyhton", "did you mean 'python'?"),
        ("run:\n  shm-size: 2g\n", "run.shm-size", "did you mean 'shm_size'?"),
        ("image:\n  nmae: x\n", "image.nmae", "did you mean 'name'?"),
        ("training:\n  epoch: 3\n", "training.epoch", "did you mean 'epochs'?"),
    ],
)
def test_unknown_key_with_did_you_mean_at_each_level(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    got = messages(diags_for(tmp_path, text))
    assert key in got, got
    assert hint in got[key]


def test_unknown_key_without_close_match_lists_known(tmp_path: Path) -> None:
    got = messages(diags_for(tmp_path, "run:\n  zzzzzz: 1\n"))
    assert "known keys: gpus, shm_size, ipc" in got["run.zzzzzz"]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("hardware: [a]\n", "hardware", "must be a mapping"),
        ("hardware:\n  gpus: two\n", "hardware.gpus", "must be an integer"),
        ("hardware:\n  gpus: true\n", "hardware.gpus", "must be an integer"),
        ("hardware:\n  gpus: -1\n", "hardware.gpus", "at least 0"),
        ("software:\n  cudnn: 'yes'\n", "software.cudnn", "true or false"),
        ("software:\n  pip: numpy\n", "software.pip", "list of PEP 508"),
        ("software:\n  apt: git\n", "software.apt", "list of package names"),
        ("software:\n  env: [A]\n", "software.env", "mapping"),
        ("software:\n  python: '3'\n", "software.python", "Python version"),
        ("software:\n  cuda: '12'\n", "software.cuda", "CUDA version"),
        ("software:\n  torch: 'banana'\n", "software.torch", "not a version"),
        ("hardware:\n  driver: '550'\n", "hardware.driver", "driver version"),
        ("name: Bad Name\n", "name", "lowercase"),
        ("description: [x]\n", "description", "must be a string"),
        ("run:\n  shm_size: lots\n", "run.shm_size", "a size like 16g"),
        ("run:\n  gpus: some\n", "run.gpus", "all, none"),
        ("image:\n  name: team/Train\n", "image.name", "image repository"),
        ("image:\n  tag: 'a:b'\n", "image.tag", "Docker tag"),
        ("software:\n  base_image: 'not an image!'\n", "software.base_image", "image reference"),
        (
            "software:\n  pip: ['--index-url=http://x']\n",
            "software.pip[0]",
            "pip options are not allowed",
        ),
        ("software:\n  pip: ['torch==2.5.1']\n", "software.pip[0]", "set software.torch instead"),
        ("software:\n  apt: ['Git']\n", "software.apt[0]", "Debian package name"),
        ("software:\n  env: {'1BAD': x}\n", "software.env.1BAD", "POSIX environment variable"),
        ("software:\n  env: {A: [1]}\n", "software.env.A", "string, number or boolean"),
        ("training:\n  epochs: many\n", "training.epochs", ""),
        ("training: [1]\n", "training", "mapping"),
    ],
)
def test_wrong_types_and_formats(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    got = messages(diags_for(tmp_path, text))
    assert key in got, got
    assert fragment in got[key]


@pytest.mark.parametrize(
    ("text", "key", "options"),
    [
        ("hardware:\n  accelerator: amd\n", "hardware.accelerator", "nvidia, cpu"),
        ("software:\n  os: ubuntu23.04\n", "software.os", "ubuntu22.04"),
        ("run:\n  ipc: shareable\n", "run.ipc", "private, host"),
        ("training:\n  precision: fp8\n", "training.precision", ""),
    ],
)
def test_allowed_values(tmp_path: Path, text: str, key: str, options: str) -> None:
    got = messages(diags_for(tmp_path, text))
    assert key in got, got
    assert options in got[key]


def test_choice_typo_suggests_the_option(tmp_path: Path) -> None:
    got = messages(diags_for(tmp_path, "hardware:\n  accelerator: nvida\n"))
    assert "did you mean 'nvidia'?" in got["hardware.accelerator"]


def test_null_means_default(tmp_path: Path) -> None:
    assert diags_for(tmp_path, "software:\n  cuda: null\n  python: ~\n") == []


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    text = (
        "nmae: x\nhardware:\n  accelerator: amd\n  gpus: two\nsoftware:\n  pyhton: '3.11'\n"
        "  pip: ['ok', 'bad req!!']\n  apt: ['Bad']\n"
        "run:\n  shm_size: lots\ntraining:\n  epoch: 3\n"
    )
    got = messages(diags_for(tmp_path, text))
    assert set(got) >= {
        "nmae",
        "hardware.accelerator",
        "hardware.gpus",
        "software.pyhton",
        "software.pip[1]",
        "software.apt[0]",
        "run.shm_size",
        "training.epoch",
    }, got
    path = tmp_path / "p.yaml"
    plan, all_diags = validate(load_profile(str(path)))
    assert plan is None and len([d for d in all_diags if d.severity == "error"]) >= 8
    lines = {d.key: d.line for d in all_diags}
    assert lines["nmae"] == 1 and lines["hardware.gpus"] == 4 and lines["run.shm_size"] == 10


def test_schema_fields_are_documented() -> None:
    table = schema.reference_markdown()
    for field in schema.FIELDS:
        assert field.doc
        if field.type != "section":
            assert f"`{field.path}`" in table
    assert schema.children("") == [
        "name",
        "description",
        "extends",
        "hardware",
        "software",
        "training",
        "run",
        "image",
        "project",
        "dev",
    ]


@pytest.mark.parametrize("name", ["UPPER/case", "Team/train", "My-Registry/x"])
def test_image_name_first_component_without_dot_or_port_must_be_lowercase(
    tmp_path: Path, name: str
) -> None:
    # Docker reads the first component as a registry only when it has '.', ':' or is
    # 'localhost'; otherwise it is part of the (lowercase-only) repository path.
    got = messages(diags_for(tmp_path, f"image:\n  name: {name}\n"))
    assert "image.name" in got, got


@pytest.mark.parametrize("nvidia", [False, True])
def test_the_plan_takes_its_defaults_from_the_schema(tmp_path: Path, nvidia: bool) -> None:
    """One declaration per key: a profile that sets nothing gets each Field's default."""
    path = tmp_path / "p.yaml"
    path.write_text("hardware: {gpu: A100}\n" if nvidia else "name: p\n", encoding="utf-8")
    plan, diags = validate(load_profile(str(path)))
    assert plan is not None, diags
    expected = {
        "os": "software.os",
        "python": "software.python",
        "torch": "software.torch",
        "gpu_count": "hardware.gpus",
        "run_gpus": "run.gpus",
        "run_shm_size": "run.shm_size",
        "run_ipc": "run.ipc",
        "image_name": "image.name",
        "dev_jupyter": "dev.jupyter",
    }
    for attr, key in expected.items():
        assert getattr(plan, attr) == schema.default(key, nvidia), attr
    assert plan.workdir == schema.default("project.workdir")
    if nvidia:
        assert plan.cuda_source == schema.default("software.cuda_source")
        assert plan.cudnn is schema.default("software.cudnn")


def test_the_torch_default_is_the_knowledge_base_s() -> None:
    from aibuild import knowledge

    assert schema.default("software.torch") == knowledge.DEFAULT_TORCH
    source = Path(schema.__file__).read_text(encoding="utf-8")
    assert f'"{knowledge.DEFAULT_TORCH}"' not in source  # written once, in the knowledge base


def test_the_reference_writes_each_default_from_its_field() -> None:
    table = schema.reference_markdown()
    assert "| `hardware.gpus` | int | 1 (nvidia), 0 (cpu) |" in table
    assert "| `software.cudnn` | bool | true |" in table
    assert "| `software.pip` | list | [] |" in table
    assert f"| `software.torch` | str | {schema.default('software.torch')} |" in table
