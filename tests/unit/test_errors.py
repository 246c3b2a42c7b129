"""errors.py: the one rule for showing a value in a message (``shown``) and the one
typo hint (``did_you_mean``) every message uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from aibuild import kv
from aibuild.errors import MAX_SHOWN_CHARS, did_you_mean, shown
from aibuild.profile import schema
from aibuild.profile.load import load_profile
from aibuild.profile.resolve import validate_schema


def test_shown_quotes_escapes_and_cuts() -> None:
    assert shown("abc") == "'abc'"
    assert shown("abc", quote=False) == "abc"
    assert shown(5) == "5"
    assert "\n" not in shown("a\nerror: fake") and "\n" not in shown("a\nb", quote=False)
    long = shown("x" * 10_000)
    assert len(long) <= MAX_SHOWN_CHARS and "..." in long
    assert long.startswith("'x") and long.endswith("x'")  # cut in the middle
    assert shown(list(range(10_000))) == "<a list of 10,000 items>"
    assert len(shown("y" * 500, limit=200)) <= 200


def test_did_you_mean() -> None:
    assert did_you_mean("pyhton", ["python", "torch"]) == "; did you mean 'python'?"
    assert did_you_mean("zzz", ["python", "torch"]) == ""
    assert did_you_mean("zzz", ["a", "b"], listing="known keys") == "; known keys: a, b"
    assert did_you_mean("zzz", [], listing="known keys") == ""
    assert did_you_mean("x" * 100_000, ["python"]) == ""  # a hostile word is cut first


def test_every_message_shows_values_one_way(tmp_path: Path) -> None:
    """The schema, the --set/--env parser and the profile checks show a long hostile
    value by the same rule: quoted and cut to MAX_SHOWN_CHARS."""
    hostile = "a" * 500 + "\n"
    with pytest.raises(ValueError) as size:
        schema.parse_size(hostile)
    assert str(size.value).startswith(shown(hostile) + " is not a size")
    with pytest.raises(ValueError) as item:
        kv.split_item(hostile, option="--env")
    assert str(item.value).startswith(f"--env {shown(hostile)}: expected")
    path = tmp_path / "p.yaml"
    path.write_text("run:\n  ipc: hots\n", encoding="utf-8")
    (diag,) = validate_schema(load_profile(str(path)))
    # the hint is added once, never patched: no second list of the options
    assert diag.message == "'hots' is not allowed; use one of: private, host; did you mean 'host'?"


def test_a_choice_without_a_close_match_lists_its_options_once(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("run:\n  ipc: zzzz\n", encoding="utf-8")
    (diag,) = validate_schema(load_profile(str(path)))
    assert diag.message == "'zzzz' is not allowed; use one of: private, host"
