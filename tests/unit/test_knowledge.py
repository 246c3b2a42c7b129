"""The knowledge base: its tables parse, agree with each other and cite their sources."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from aibuild import knowledge as kb
from aibuild.profile.resolve import first_cuda_for, toolkit_can_target

DATA = Path(kb.__file__).resolve().parent / "data"
CSVS = sorted(p.name for p in DATA.glob("*.csv"))


def _source_codes() -> set[str]:
    text = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    return set(re.findall(r"\bS\d+[a-z]?\b", text))


@pytest.mark.parametrize("name", CSVS)
def test_every_row_cites_a_documented_source(name: str) -> None:
    known = _source_codes()
    with open(DATA / name, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for i, row in enumerate(rows, start=2):
        codes = [c.strip() for c in (row.get("sources") or "").split(";") if c.strip()]
        assert codes, f"{name}:{i}: no sources"
        assert set(codes) <= known, f"{name}:{i}: undocumented sources {set(codes) - known}"
        if "uncertain" in row:
            assert row["uncertain"].strip() in ("", "?"), f"{name}:{i}: uncertain must be '' or '?'"


def test_image_tags_agree_with_their_columns() -> None:
    images = kb.cuda_images()
    assert len(images) > 100
    for img in images:
        cudnn = "" if img.cudnn == "none" else f"{img.cudnn}-"
        assert img.tag == f"{img.full}-{cudnn}{img.flavor}-{img.os}", img
        assert img.full.startswith(img.cuda + ".")
        # NVIDIA's cuDNN tag names changed with the release
        if img.cudnn != "none":
            if kb.vkey(img.full) <= kb.vkey("12.2.2"):
                assert img.cudnn == "cudnn8", img
            elif kb.vkey(img.full) >= kb.vkey("12.4.1"):
                assert img.cudnn == "cudnn", img


def test_every_torch_cuda_variant_is_a_known_toolkit() -> None:
    targets = kb.cuda_targets()
    for minor, rel in kb.torch_releases().items():
        assert rel.cuda, minor
        for cuda in rel.cuda:
            assert kb.targets_for(cuda) is not None, (minor, cuda)
        assert kb.vkey(rel.python_min) <= kb.vkey(rel.python_max)
    assert "12.8" in targets


def test_default_torch_is_known() -> None:
    assert kb.torch_minor(kb.DEFAULT_TORCH) in kb.torch_releases()
    assert kb.TORCH_PATCHES[kb.torch_minor(kb.DEFAULT_TORCH)] == kb.DEFAULT_TORCH


@pytest.mark.parametrize(
    ("name", "cc"),
    [
        ("A100", "8.0"),
        ("a100", "8.0"),
        ("NVIDIA H100", "9.0"),
        ("RTX 4090", "8.9"),
        ("rtx5090", "12.0"),
        ("B200", "10.0"),
        ("V100", "7.0"),
        ("T4", "7.5"),
        ("L4", "8.9"),
        ("A10G", "8.6"),
    ],
)
def test_gpu_lookup(name: str, cc: str) -> None:
    gpu = kb.find_gpu(name)
    assert gpu is not None and gpu.cc == cc


def test_unknown_gpu() -> None:
    assert kb.find_gpu("Voodoo 3") is None


def test_uncertain_gpu_is_marked() -> None:
    a10g = kb.find_gpu("A10G")
    a100 = kb.find_gpu("A100")
    assert a10g is not None and a10g.uncertain and a100 is not None and not a100.uncertain


def test_toolkit_targets() -> None:
    assert toolkit_can_target("12.8", "10.0") and toolkit_can_target("12.8", "12.0")
    assert not toolkit_can_target("12.4", "10.0")
    assert not toolkit_can_target("13.0", "7.0")
    assert first_cuda_for("10.0") == "12.8"
    assert first_cuda_for("12.0") == "12.8"


def test_wheel_arch_coverage_rules() -> None:
    arch = kb.WheelArch(sass=("8.0", "9.0a"), ptx=("9.0",), uncertain=False, sources="")
    assert kb.wheel_covers("8.0", arch) and kb.wheel_covers("8.6", arch)  # SASS 8.0 runs on 8.x
    assert kb.wheel_covers("9.0", arch)  # exact arch-specific target
    assert kb.wheel_covers("12.0", arch)  # PTX 9.0 JITs forward
    assert not kb.wheel_covers("7.5", arch)
    no_ptx = kb.WheelArch(sass=("8.0", "9.0"), ptx=(), uncertain=False, sources="")
    assert not kb.wheel_covers("10.0", no_ptx) and not kb.wheel_covers("12.0", no_ptx)
    assert kb.wheel_covers("12.0", kb.wheel_archs()[("2.7", "12.8")])
    assert not kb.wheel_covers("12.0", kb.wheel_archs()[("2.6", "12.6")])


def test_driver_facts() -> None:
    assert kb.driver_for("12.4.1")[0] == "550.54.15"
    assert kb.compat_floor("12.4") == "525.60.13"
    assert kb.compat_floor("13.0") == "580.65.06"


def test_sm_names() -> None:
    assert kb.sm("10.0") == "sm_100" and kb.sm("8.6") == "sm_86"
