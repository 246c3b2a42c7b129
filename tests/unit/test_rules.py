"""The compatibility rules (aibuild.profile.rules), one test each: every rule passes a
fact that holds and finds the one that does not, with a fix in its message."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aibuild import knowledge as kb
from aibuild.profile import rules
from aibuild.profile.rules import CudaFacts


def facts(cuda: str = "12.4", torch: str = "2.5.1", gpu: str = "A100", **kw: object) -> CudaFacts:
    found = kb.find_gpu(gpu)
    assert found is not None
    base = CudaFacts(
        cuda=cuda,
        torch=torch,
        rel=kb.torch_releases()[kb.torch_minor(torch)],
        gpu=found,
        os_name="ubuntu22.04",
        cudnn=True,
        driver=None,
        source="wheels",
        toolkit=False,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def only(findings: list[rules.Finding]) -> rules.Finding:
    assert len(findings) == 1, findings
    return findings[0]


def test_cuda_known() -> None:
    assert rules.cuda_known(facts()) == []
    found = only(rules.cuda_known(facts(cuda="9.9")))
    assert found.severity == "error" and "CUDA 9.9 is not in the knowledge base" in found.message


def test_toolkit_targets_the_gpu() -> None:
    assert rules.toolkit_targets_gpu(facts()) == []
    too_old = only(rules.toolkit_targets_gpu(facts(gpu="B200")))  # sm_100 needs CUDA 12.8
    assert too_old.severity == "error" and "CUDA >= 12.8 can" in too_old.message
    dropped = only(rules.toolkit_targets_gpu(facts(cuda="13.0", torch="2.13.0", gpu="V100")))
    assert "CUDA 13 dropped it" in dropped.message


def test_a_wheel_exists() -> None:
    assert rules.wheel_exists(facts()) == []
    found = only(rules.wheel_exists(facts(cuda="12.6")))  # torch 2.5: 11.8, 12.1, 12.4
    assert found.severity == "error"
    assert (
        "torch 2.5.1 has no wheels for CUDA 12.6" in found.message and "use cuda" in found.message
    )


def test_arch_coverage() -> None:
    assert rules.arch_coverage(facts()) == []
    assert rules.arch_coverage(facts(cuda="12.6")) == []  # no wheels: wheel_exists's finding
    found = only(rules.arch_coverage(facts(cuda="12.8", torch="2.7.1", gpu="V100")))
    assert found.severity == "error" and "do not run on sm_70" in found.message


def test_base_image_flavour() -> None:
    assert rules.base_image_flavour(facts(source="image")) == []
    assert rules.base_image_flavour(facts(os_name="debian12")) == []  # wheels: no nvidia/cuda
    found = only(rules.base_image_flavour(facts(source="image", os_name="debian12")))
    assert found.severity == "error" and "use os ubuntu20.04 or ubuntu22.04" in found.message


@pytest.mark.parametrize(
    ("driver", "severity"),
    [(None, None), ("560.35.03", None), ("535.54.03", "warning"), ("470.57.02", "error")],
)
def test_driver_floor(driver: str | None, severity: str | None) -> None:
    found = rules.driver_floor(facts(driver=driver))
    if severity is None:
        assert found == []
    else:
        assert only(found).severity == severity and only(found).key == "hardware.driver"


def test_a_stopping_rule_ends_the_candidate() -> None:
    """An unknown CUDA is not also checked for wheels, images and the driver."""
    findings = rules.check_cuda(facts(cuda="9.9", driver="470.57.02"))
    assert [f.message.split(" is ")[0] for f in findings] == ["CUDA 9.9"]


def test_the_rule_table_lists_every_rule_once() -> None:
    table = rules.rules_markdown().splitlines()
    assert table[:2] == ["| rule | checks |", "| --- | --- |"]
    assert len(table) == 2 + len(rules.RULES)
    for rule, row in zip(rules.RULES, table[2:], strict=True):
        assert row.startswith(f"| {rule.name} | ") and rule.doc and "\n" not in row
