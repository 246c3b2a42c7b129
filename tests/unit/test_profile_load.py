"""Loading profiles: built-ins, extends chains, merge rules, --set, positions, YAML errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aibuild.errors import ProfileError
from aibuild.profile.load import builtin_profiles, load_profile, merge, parse_override
from aibuild.profile.resolve import validate

DATA = Path(__file__).resolve().parent / "data"
PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(ref: str, overrides: tuple[str, ...] = ()) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_profile(ref, overrides)
    return info.value


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_every_builtin_is_valid(name: str) -> None:
    plan, diags = validate(load_profile(name))
    assert plan is not None, [d.format() for d in diags]
    assert not [d for d in diags if d.severity == "error"]
    assert plan.profile_name == name


def test_builtins_listed_skip_shared_bases() -> None:
    names = builtin_profiles()
    assert "_base" not in names and "_nvidia" not in names
    assert len(names) >= 12


@pytest.mark.parametrize("ref", ["gpu-a100", "gpu-a100.yaml", str(PROFILES / "gpu-a100.yaml")])
def test_builtin_by_name_with_suffix_and_path(ref: str) -> None:
    profile = load_profile(ref)
    assert profile.name == "gpu-a100"
    assert profile.data["hardware"]["gpu"] == "A100"
    assert profile.data["software"]["pip"] == ["numpy", "scipy", "pillow"]


def test_unknown_profile_suggests_a_close_name() -> None:
    err = load_error("gpu-a1000")
    assert "did you mean 'gpu-a100'" in str(err)


def test_extends_chain_builtin_and_relative_path() -> None:
    profile = load_profile(str(DATA / "chain" / "child.yaml"))
    assert [Path(f).name for f in profile.files] == [
        "child.yaml",
        "parent.yaml",
        "cpu.yaml",
        "_base.yaml",
    ]
    sw = profile.data["software"]
    # lists that append: parent's items first, then the child's new ones, no duplicates
    assert sw["pip"] == ["numpy", "pillow", "scipy"]
    assert sw["apt"] == ["git", "curl"]
    # maps deep-merge, scalars override
    assert sw["env"] == {"A": "1", "B": "2"}
    assert sw["os"] == "debian12"  # from cpu.yaml
    assert profile.data["run"] == {"gpus": "none", "shm_size": "4g"}
    assert profile.data["name"] == "chain-child"
    assert profile.data["description"] == "parent"
    assert "extends" not in profile.data
    assert profile.data["training"]["model"] == "cnn"  # from _base


def test_merge_rules() -> None:
    parent = {"a": {"x": 1, "y": [1, 2]}, "software": {"pip": ["a", "b"], "other": [1]}, "s": 1}
    child = {"a": {"y": [3]}, "software": {"pip": ["b", "c"], "other": [2]}, "s": None}
    assert merge(parent, child) == {
        "a": {"x": 1, "y": [3]},  # plain lists replace
        "software": {"pip": ["a", "b", "c"], "other": [2]},
        "s": None,  # null overrides too
    }
    assert parent["software"]["pip"] == ["a", "b"], "merge must not mutate its inputs"


def test_extends_cycle_names_the_chain(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: c.yaml\n")
    write(tmp_path, "c.yaml", "extends: a.yaml\n")
    message = str(load_error(str(tmp_path / "a.yaml")))
    assert "cycle" in message
    assert "a.yaml -> " in message and "b.yaml -> " in message and "c.yaml -> " in message
    assert message.rstrip().endswith("a.yaml")


def test_extends_self_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "me.yaml", "extends: me.yaml\n")
    assert "cycle" in str(load_error(str(tmp_path / "me.yaml")))


def test_missing_parent_points_at_extends(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nextends: nope.yaml\n")
    err = load_error(str(path))
    diag = err.diagnostics[0]
    assert "not found" in diag.message and "nope.yaml" in diag.message
    assert (diag.line, diag.col, diag.key) == (2, 10, "extends")
    assert diag.file.endswith("p.yaml")


def test_set_overrides_nested_yaml_values_and_lists() -> None:
    profile = load_profile(
        "cpu",
        (
            "software.pip=[numpy, 'torchvision==0.20']",
            "run.shm_size=8g",
            "training.epochs=7",
            "new.deep.key=true",
        ),
    )
    assert profile.data["software"]["pip"] == ["numpy", "torchvision==0.20"]
    assert profile.data["run"]["shm_size"] == "8g"
    assert profile.data["training"]["epochs"] == 7
    assert profile.data["new"] == {"deep": {"key": True}}
    assert profile.pos("run.shm_size").file == "--set" and profile.pos("run.shm_size").line == 2


@pytest.mark.parametrize(
    "key", ["software.python", "software.cuda", "software.torch", "hardware.driver"]
)
def test_set_version_keys_stay_text(key: str) -> None:
    assert parse_override(f"{key}=3.10") == (key, "3.10")


@pytest.mark.parametrize("bad", ["software.torch", "=2.5", "software..torch=1", ".x=1"])
def test_bad_set_is_a_profile_error(bad: str) -> None:
    err = load_error("cpu", (bad,))
    assert "expected KEY.PATH=VALUE" in str(err)


def test_set_through_a_scalar_is_an_error() -> None:
    err = load_error("cpu", ("software.python.x=1",))
    assert "'software.python' is not a mapping" in str(err)


def test_python_unquoted_stays_text(tmp_path: Path) -> None:
    path = write(
        tmp_path, "p.yaml", "name: p\nsoftware:\n  python: 3.10\n  cuda: 12.10\n  torch: 2.10\n"
    )
    profile = load_profile(str(path))
    assert profile.data["software"]["python"] == "3.10"
    assert profile.data["software"]["cuda"] == "12.10"
    assert profile.data["software"]["torch"] == "2.10"


def test_positions_point_at_the_offending_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        'name: p\nhardware:\n  accelerator: cpu\nsoftware:\n  os: debian12\n  python: "2.7"\n'
        '  pip:\n    - numpy\n    - "not a req!!"\n',
    )
    _, diags = validate(load_profile(str(path)))
    by_key = {d.key: d for d in diags}
    assert (by_key["software.pip[1]"].line, by_key["software.pip[1]"].col) == (9, 7)
    assert by_key["software.pip[1]"].file == str(path)
    assert by_key["software.pip[1]"].format().startswith(f"{path}:9:7: error: ")


def test_positions_of_inherited_keys_point_at_the_parent_file(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "hardware:\n  accelerator: cpu\nrun:\n  shm_size: lots\n")
    child = write(tmp_path, "child.yaml", "name: c\nextends: parent.yaml\n")
    _, diags = validate(load_profile(str(child)))
    (diag,) = [d for d in diags if d.key == "run.shm_size"]
    assert diag.file.endswith("parent.yaml") and (diag.line, diag.col) == (4, 13)


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nsoftware:\n  python: '3.11'\n  python: '3.12'\n")
    diag = load_error(str(path)).diagnostics[0]
    assert "duplicate key 'python'" in diag.message
    assert (diag.line, diag.col) == (4, 3)


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nsoftware:\n  pip: [numpy\n  apt: []\n")
    diag = load_error(str(path)).diagnostics[0]
    assert diag.message.startswith("invalid YAML")
    assert diag.line >= 3 and diag.col >= 1
    assert diag.file.endswith("p.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_profile_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    assert "must be a mapping" in str(load_error(str(path)))


def test_empty_file_is_an_empty_profile(tmp_path: Path) -> None:
    profile = load_profile(str(write(tmp_path, "empty.yaml", "")))
    assert profile.data == {} and profile.name == "empty"


def test_non_string_keys_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\n1: x\n")
    assert "keys must be strings" in str(load_error(str(path)))


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "x: &r\n  shm_size: 4g\nrun:\n  <<: *r\n  ipc: host\n")
    assert load_profile(str(path)).data["run"] == {"shm_size": "4g", "ipc": "host"}


def test_non_utf8_file_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert "cannot read profile" in str(load_error(str(path)))


def test_set_list_item_errors_point_at_the_set() -> None:
    # cpu inherits `pip: []` from _base: no item positions exist before the --set
    _, diags = validate(load_profile("cpu", ("software.pip=['bad!!']",)))
    (diag,) = [d for d in diags if d.key == "software.pip[0]"]
    assert (diag.file, diag.line) == ("--set", 1), diag.format()
