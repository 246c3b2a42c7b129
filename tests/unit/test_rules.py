"""The compatibility rules (aibuild.profile.rules), one test each: every rule passes a
fact that holds and finds the one that does not, with a fix in its message."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aibuild import knowledge as kb
from aibuild.profile import rules
from aibuild.profile.rules import CudaFacts, ProfileFacts


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


def profile(
    hardware: dict[str, object] | None = None,
    software: dict[str, object] | None = None,
    nvidia: bool = True,
    **kw: object,
) -> ProfileFacts:
    hw = {"gpu": "A100"} if hardware is None and nvidia else dict(hardware or {})
    sw = {"torch": "2.5.1"} if software is None else software
    base = ProfileFacts(hardware=hw, software=sw, nvidia=nvidia, toolkit=False, python="3.11")
    return replace(base, **kw)  # type: ignore[arg-type]


def only(findings: list[rules.Finding]) -> rules.Finding:
    assert len(findings) == 1, findings
    return findings[0]


# -- the profile rules ------------------------------------------------------------------


def test_os_matches_base() -> None:
    assert rules.os_matches_base(profile(software={"os": "debian12"})) == []  # no --base-os
    assert rules.os_matches_base(profile(base_os="debian12")) == []  # software.os not given
    same = profile(software={"os": "debian12"}, base_os="debian12")
    assert rules.os_matches_base(same) == []
    found = only(rules.os_matches_base(profile(software={"os": "ubuntu22.04"}, base_os="debian12")))
    assert (found.severity, found.key) == ("warning", "software.os")
    assert found.message == "the base image is debian12, not ubuntu22.04: building for debian12"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1.2.3", "torch 1.2 is not in the knowledge base"),
        ("1.2", "torch 1.2 is not in the knowledge base; known: "),
        (">=99", "no known torch release matches '>=99'"),
        ("2.5.1+cu121", "write torch without a local suffix ('2.5.1+cu121')"),
    ],
)
def test_torch_known(spec: str, message: str) -> None:
    assert rules.torch_known(profile()) == []
    assert rules.pick_torch("~=2.5.0")[0] == "2.5.1"  # a specifier: the newest it admits
    found = only(rules.torch_known(profile(software={"torch": spec})))
    assert (found.severity, found.key) == ("error", "software.torch")
    assert found.message.startswith(message)


def test_torch_known_warns_of_an_unverified_release() -> None:
    unverified = [m for m in kb.torch_releases() if kb.torch_unverified(m)]
    assert unverified, "the knowledge base has a release not verified as released (2.14)"
    found = only(rules.torch_known(profile(software={"torch": unverified[0]})))
    assert found.severity == "warning" and "is not verified as released" in found.message


def test_python_in_torch_range() -> None:
    assert rules.python_in_torch_range(profile()) == []
    below = only(rules.python_in_torch_range(profile(python="3.8")))
    assert (below.severity, below.key) == ("error", "software.python")
    assert below.message.startswith(
        "torch 2.5.1 supports Python 3.9 to 3.12, not 3.8; use python 3.9"
    )
    above = only(rules.python_in_torch_range(profile(python="3.14")))  # a verified release
    assert above.severity == "error" and "use python 3.12" in above.message
    rel = kb.torch_releases()["2.13"]
    assert rel.uncertain  # known from secondary sources: its range may have grown
    newer = profile(software={"torch": "2.13.0"}, python="3.16")
    assert only(rules.python_in_torch_range(newer)).severity == "warning"


def test_cpu_has_no_gpu_keys() -> None:
    assert rules.cpu_has_no_gpu_keys(profile(nvidia=False)) == []
    assert rules.cpu_has_no_gpu_keys(profile(software={"cuda": "12.4"})) == []  # nvidia
    every = profile(
        hardware={"gpu": "A100", "driver": "550.54.14"},
        software={"cuda": "12.4", "cuda_source": "image", "cuda_toolkit": True},
        nvidia=False,
    )
    found = rules.cpu_has_no_gpu_keys(every)
    assert [f.key for f in found] == [
        "software.cuda_source",
        "software.cuda_toolkit",
        "hardware.gpu",
        "hardware.driver",
        "software.cuda",
    ]
    assert all(f.severity == "error" for f in found)
    assert found[2].message == (
        "hardware.gpu is set but the accelerator is cpu; remove it or set "
        "hardware.accelerator: nvidia"
    )


def test_cuda_source_agrees() -> None:
    assert rules.cuda_source_agrees(profile()) == []
    assert rules.cuda_source_agrees(profile(toolkit=True)) == []  # the source defaults to image
    wheels = only(
        rules.cuda_source_agrees(profile(software={"cuda_source": "wheels"}, toolkit=True))
    )
    assert wheels.key == "software.cuda_source" and "needs nvcc" in wheels.message
    image = only(
        rules.cuda_source_agrees(profile(software={"cuda_source": "image"}, explicit_base="x:1"))
    )
    assert image.key == "software.cuda_source" and "keep one of them" in image.message
    toolkit = only(rules.cuda_source_agrees(profile(toolkit=True, explicit_base="x:1")))
    assert toolkit.key == "software.cuda_toolkit" and "keep one of them" in toolkit.message
    cpu = profile(software={"cuda_source": "wheels"}, toolkit=True, nvidia=False)
    assert rules.cuda_source_agrees(cpu) == []  # cpu_has_no_gpu_keys says so


def test_gpu_known() -> None:
    assert rules.gpu_known(profile()) == []
    assert rules.gpu_known(profile(nvidia=False)) == []
    missing = only(rules.gpu_known(profile(hardware={})))
    assert (missing.key, missing.severity) == ("hardware", "error")
    assert "hardware.gpu is required" in missing.message
    typo = only(rules.gpu_known(profile(hardware={"gpu": "A1000"})))
    assert typo.key == "hardware.gpu" and "unknown GPU 'A1000'; did you mean" in typo.message
    uncertain = [g for g in kb.gpus().values() if g.uncertain]
    assert uncertain, "the knowledge base has GPUs known from secondary sources"
    found = only(rules.gpu_known(profile(hardware={"gpu": uncertain[0].name})))
    assert found.severity == "warning" and "rests on secondary sources" in found.message


def test_gpu_count() -> None:
    assert rules.gpu_count(profile()) == []  # not given: the default
    assert rules.gpu_count(profile(hardware={"gpu": "A100", "gpus": 8})) == []
    assert rules.gpu_count(profile(hardware={"gpus": 0}, nvidia=False)) == []
    found = only(rules.gpu_count(profile(hardware={"gpu": "A100", "gpus": 0})))
    assert (found.severity, found.key) == ("error", "hardware.gpus")


def test_run_gpus_on_cpu() -> None:
    assert rules.run_gpus_on_cpu(profile(nvidia=False)) == []  # the default: none
    assert rules.run_gpus_on_cpu(profile(run_gpus="all")) == []  # nvidia
    found = only(rules.run_gpus_on_cpu(profile(nvidia=False, run_gpus="1")))
    assert (found.severity, found.key) == ("warning", "run.gpus")
    assert found.message == "run.gpus is 1 but the accelerator is cpu; the image has no CUDA"


def test_a_stopping_profile_rule_ends_the_stage() -> None:
    """An unknown torch is not also checked against Python; an unknown GPU not counted."""
    findings, stopped = rules.apply("profile", profile(software={"torch": "1.2"}, python="2.7"))
    assert stopped and [f.key for f in findings] == ["software.torch"]
    findings, stopped = rules.apply("profile", profile(hardware={"gpu": "Z9", "gpus": 0}))
    assert stopped and [f.key for f in findings] == ["hardware.gpu"]
    findings, stopped = rules.apply("profile", profile(hardware={"gpu": "A100", "gpus": 0}))
    assert not stopped and [f.key for f in findings] == ["hardware.gpus"]


# -- the CUDA rules ----------------------------------------------------------------------


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
    assert table[:2] == ["| rule | stage | checks |", "| --- | --- | --- |"]
    assert len(table) == 2 + len(rules.RULES)
    for rule, row in zip(rules.RULES, table[2:], strict=True):
        assert row.startswith(f"| {rule.name} | {rule.stage} | ") and rule.doc
        assert "\n" not in row and "|" not in rule.doc
    assert (
        len({r.name for r in rules.RULES})
        == len({r.check for r in rules.RULES})
        == len(rules.RULES)
    )


def test_every_rule_function_is_in_the_table_and_tested() -> None:
    """RULES maps one to one onto the module's rule functions (those that take facts and
    return findings), and each has a test here named after it or its rule."""
    import inspect

    functions = {
        f
        for name, f in vars(rules).items()
        if inspect.isfunction(f)
        and not name.startswith("_")
        and f.__module__ == rules.__name__
        and list(inspect.signature(f).parameters) == ["f"]
        and inspect.signature(f).return_annotation == "list[Finding]"
    }
    assert functions == {r.check for r in rules.RULES}
    assert all(r.stage in rules.STAGES for r in rules.RULES)
    tests = {name for name in globals() if name.startswith("test_")}
    for rule in rules.RULES:
        by_name = "test_" + rule.name.lower().replace(" ", "_").replace("-", "_")
        assert {f"test_{rule.check.__name__}", by_name} & tests, rule.name
