"""Hostile input: any string in any string-valued profile key either is refused with a
ProfileError (exit 1), or renders without escaping its quoting: the same instruction
sequence and line count as the clean profile, and the value comes back intact.
"""

from __future__ import annotations

import copy
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aibuild.errors import ProfileError
from aibuild.image.render import render_dockerfile, requirements_text
from aibuild.profile.load import Profile, load_profile
from aibuild.profile.plan import BuildPlan
from aibuild.profile.resolve import validate
from tests.unit.conftest import dfparse, run_cli

FRAGMENTS = [
    "\n",
    "\r",
    "\r\n",
    '"',
    "'",
    "$(",
    ")",
    "`",
    "\\",
    ";",
    "&&",
    "|",
    "\x00",
    "\t",
    "\x7f",
    "\x85",
    "\u2028",
    "é",
    "🙂",
    "$HOME",
    "${X}",
    "#",
    " ",
    "a",
    "1",
    "-",
    "=",
    ".",
    "/",
    ":",
    "@",
    "{{",
    "}}",
    "{%",
    "RUN rm -rf /",
    "\\\n",
    "EOF",
    "<<",
]
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=8).map("".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=4).map(lambda xs: "numpy" + "".join(xs)),
)


def _clean_data() -> dict[str, Any]:
    data = copy.deepcopy(load_profile("gpu-a100").data)
    data["description"] = "clean"
    data["software"]["env"] = {"K": "v"}
    data["software"]["base_image"] = "example.com/base:1"
    data["image"] = {"name": "example.com/team/train"}
    data["training"]["device"] = "cpu"
    data["training"]["data_dir"] = "/data"
    return data


CLEAN = _clean_data()


def _set(data: dict[str, Any], where: str, value: str) -> None:
    sw = data["software"]
    if where == "pip":
        sw["pip"].append(value)
    elif where == "apt":
        sw["apt"].append(value)
    elif where == "env_key":
        sw["env"] = {value: "v"}
    elif where == "env_value":
        sw["env"] = {"K": value}
    else:
        *parents, last = where.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value


WHERE = [
    "name",
    "description",
    "hardware.gpu",
    "pip",
    "apt",
    "env_key",
    "env_value",
    "software.base_image",
    "image.name",
    "training.device",
    "training.data_dir",
    "training.model",
]


def _plan(data: dict[str, Any]) -> BuildPlan | None:
    profile = Profile(name="hostile", data=data, files=["hostile.yaml"])
    plan, _ = validate(profile)
    return plan


CLEAN_PLAN = _plan(copy.deepcopy(CLEAN))
assert CLEAN_PLAN is not None
CLEAN_TEXT = render_dockerfile(CLEAN_PLAN)


def _env_pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for word, args in dfparse.instructions(text):
        if word == "ENV":
            for key, quoted in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', args):
                out[key] = re.sub(r"\\(.)", r"\1", quoted)
    return out


def _assert_contained(where: str, value: str, plan: BuildPlan, text: str) -> None:
    assert dfparse.keywords(text) == dfparse.keywords(CLEAN_TEXT)
    assert text.count("\n") == CLEAN_TEXT.count("\n")
    if where == "apt":
        (run,) = [
            a for w, a in dfparse.instructions(text) if w == "RUN" and "install" in a and "git" in a
        ]
        assert value in shlex.split(run)
    if where == "env_value":
        assert _env_pairs(text)["K"] == value
    if where == "pip":
        assert requirements_text(plan).count("\n") <= requirements_text(CLEAN_PLAN).count("\n") + 1
    if where == "description":
        (label,) = [a for w, a in dfparse.instructions(text) if w == "LABEL"]
        quoted = re.search(r'org\.opencontainers\.image\.description="((?:[^"\\]|\\.)*)"', label)
        assert quoted and re.sub(r"\\(.)", r"\1", quoted.group(1)) == value


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(WHERE), value=HOSTILE)
def test_hostile_values_never_escape(where: str, value: str) -> None:
    data = copy.deepcopy(CLEAN)
    _set(data, where, value)
    try:
        plan = _plan(data)
    except ProfileError:
        return
    if plan is None:
        return
    _assert_contained(where, value, plan, render_dockerfile(plan))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(WHERE), value=HOSTILE)
def test_hostile_yaml_files_through_the_cli(where: str, value: str) -> None:
    data = copy.deepcopy(CLEAN)
    _set(data, where, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        result = run_cli(["render", str(path)])
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert dfparse.keywords(result.stdout) == dfparse.keywords(CLEAN_TEXT)
        assert result.stdout.count("\n") == CLEAN_TEXT.count("\n")
    else:
        assert "error:" in result.stderr


NASTY = [
    'a"b',
    "$(rm -rf /)",
    "`id`",
    "x\\",
    '\\"',
    "; RUN echo pwned",
    "'single'",
    "${PATH}",
    "é🙂",
    "#comment",
    "a \\ b",
    "&& echo hi |",
]


@pytest.mark.parametrize("where", ["description", "env_value"])
@pytest.mark.parametrize("value", NASTY)
def test_nasty_but_printable_values_are_accepted_and_contained(where: str, value: str) -> None:
    data = copy.deepcopy(CLEAN)
    _set(data, where, value)
    plan = _plan(data)
    assert plan is not None
    _assert_contained(where, value, plan, render_dockerfile(plan))


# training values never reach the Dockerfile (only profile.yaml, YAML-quoted):
# the trainer judges them
@pytest.mark.parametrize("where", [w for w in WHERE if not w.startswith("training.")])
@pytest.mark.parametrize("value", ["a\nRUN echo pwned", "a\rb", "a\x00b"])
def test_control_characters_are_refused_everywhere(where: str, value: str) -> None:
    data = copy.deepcopy(CLEAN)
    _set(data, where, value)
    assert _plan(data) is None


@pytest.mark.parametrize("text", ["name: x\x1f\n", "name: x\x00\n", "description: \x07\n"])
def test_control_character_in_a_profile_file_is_a_profile_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert info.value.diagnostics[0].line == 1


def test_control_character_in_a_set_value_is_a_profile_error() -> None:
    with pytest.raises(ProfileError):
        load_profile("cpu", ("description=a\x01b",))


@settings(max_examples=25, deadline=None)
@given(key=HOSTILE)
def test_diagnostics_stay_on_one_line(key: str) -> None:
    # an unknown key or env name is echoed in the message and the (key.path) suffix
    for data in (
        {**CLEAN, key: 1},
        {**CLEAN, "software": {**CLEAN["software"], "env": {key: "v"}}},
    ):
        _, diags = validate(Profile(name="hostile", data=data, files=["hostile.yaml"]))
        for diag in diags:
            assert "\n" not in diag.format() and "\r" not in diag.format(), diag.format()


@settings(max_examples=20, deadline=None)
@given(text=st.text(max_size=200))
def test_random_yaml_text_never_crashes(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(
            text, encoding="utf-8", errors="surrogatepass"
        ) if "\ud800" not in text else None
        if not path.exists():
            return
        result = run_cli(["check", str(path)])
    assert result.exit_code in (0, 1), (result.exit_code, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


@settings(max_examples=20, deadline=None)
@given(override=st.text(max_size=40))
def test_random_set_never_crashes(override: str) -> None:
    result = run_cli(["check", "cpu", "--set", override])
    assert result.exit_code in (0, 1), (result.exit_code, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
