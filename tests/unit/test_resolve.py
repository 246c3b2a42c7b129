"""Compatibility rules and resolution into a frozen BuildPlan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aibuild.errors import Diagnostic, ProfileError
from aibuild.profile import rules
from aibuild.profile.load import load_profile
from aibuild.profile.plan import BuildPlan
from aibuild.profile.resolve import plan_for, validate


def check(ref: str, *overrides: str) -> tuple[BuildPlan | None, list[Diagnostic]]:
    return validate(load_profile(ref, overrides))


def errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.severity == "error"]


def warnings(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.severity == "warning"]


def only_error(ref: str, *overrides: str) -> Diagnostic:
    plan, diags = check(ref, *overrides)
    errs = errors(diags)
    assert plan is None and len(errs) == 1, [d.format() for d in diags]
    return errs[0]


# -- torch x CUDA wheels -------------------------------------------------------------


def test_torch_without_wheels_for_the_cuda_names_the_available_ones() -> None:
    plan, diags = check(
        "gpu-h100", "software.torch=2.8", "software.cuda=11.8", "software.os=ubuntu22.04"
    )
    assert plan is None
    (err,) = [d for d in errors(diags) if "no wheels" in d.message]
    assert "torch 2.8.0 has no wheels for CUDA 11.8; it has 12.6, 12.8, 12.9" in err.message
    assert err.key == "software.cuda"


def test_unknown_torch_release_is_an_error() -> None:
    err = only_error("cpu", "software.torch=1.2.3")
    assert "torch 1.2 is not in the knowledge base" in err.message


def test_torch_specifier_picks_the_newest_match() -> None:
    plan = plan_for("gpu-a100", ("software.torch=~=2.5.0",))
    assert plan.torch == "2.5.1"
    assert "no known torch release matches" in only_error("cpu", "software.torch=>=99").message


# -- Python range ---------------------------------------------------------------------


def test_python_below_torch_range_is_an_error() -> None:
    err = only_error("gpu-a100", "software.python=3.8")
    assert err.key == "software.python"
    assert "torch 2.5.1 supports Python 3.9 to 3.12, not 3.8" in err.message


def test_python_above_range_of_a_verified_release_is_an_error() -> None:
    err = only_error("gpu-a100", "software.python=3.14")
    assert "not 3.14" in err.message


def test_python_above_range_of_a_secondary_source_release_is_a_warning() -> None:
    plan, diags = check("gpu-h100", "software.python=3.16")
    assert plan is not None, [d.format() for d in diags]
    (warn,) = [d for d in warnings(diags) if d.key == "software.python"]
    assert "torch 2.13.0 supports Python 3.10 to 3.15, not 3.16" in warn.message


def test_python_below_range_of_a_secondary_source_release_stays_an_error() -> None:
    err = only_error("gpu-h100", "software.python=3.9")
    assert err.key == "software.python"


# -- GPU x wheel architectures ----------------------------------------------------------


def test_rtx5090_needs_torch_27_with_cuda_128() -> None:
    err = only_error("gpu-rtx5090", "software.torch=2.6")
    assert "torch >= 2.7 with cuda 12.8" in err.message
    assert "sm_120" in err.message


def test_rtx5090_with_torch_27_resolves_to_cu128() -> None:
    plan = plan_for("gpu-rtx5090", ("software.torch=2.7.1",))
    assert plan.cuda == "12.8" and plan.torch_variant == "cu128"
    assert plan.arch_list == ("12.0",)


def test_v100_is_not_in_cuda13_wheels() -> None:
    err = only_error("gpu-v100", "software.cuda=13.0")
    assert "sm_70" in err.message and "CUDA 13 dropped it" in err.message
    assert "use cuda 12." in err.message


def test_gpu_not_in_wheel_arch_list_is_an_error() -> None:
    # torch 2.8 cu126 wheels are built for sm_50..sm_90: no Blackwell
    err = only_error("gpu-b200", "software.torch=2.8", "software.cuda=12.6")
    assert "sm_100" in err.message


# -- toolkit targets ----------------------------------------------------------------------


def test_b200_with_cuda_124_is_one_line_naming_sm100_and_cuda_128() -> None:
    err = only_error("gpu-b200", "software.cuda=12.4")
    line = err.format()
    assert "\n" not in line
    assert "sm_100" in line and "CUDA >= 12.8" in line
    assert err.key == "software.cuda"


def test_cuda13_cannot_target_sm70() -> None:
    assert "cannot target sm_70" in only_error("gpu-v100", "software.cuda=13.0").message


def test_unknown_cuda_is_an_error() -> None:
    assert (
        "CUDA 10.9 is not in the knowledge base"
        in only_error("gpu-a100", "software.cuda=10.9").message
    )


# -- driver -----------------------------------------------------------------------------------


def test_driver_below_compat_floor_is_an_error() -> None:
    err = only_error("gpu-a100", "hardware.driver=500.10.01")
    assert err.key == "hardware.driver"
    assert "minor-version-compatibility floor is 525.60.13" in err.message


def test_driver_between_floor_and_minimum_is_a_warning() -> None:
    plan, diags = check("gpu-a100", "hardware.driver=530.30.02")
    assert plan is not None
    (warn,) = warnings(diags)
    assert warn.key == "hardware.driver"
    assert "below CUDA 12.4 (torch's wheels)'s minimum 550.54.14" in warn.message


def test_h100_with_driver_580_resolves_to_cuda_130_not_132(tmp_path: Path) -> None:
    plan, diags = check("gpu-h100")
    assert plan is not None and plan.cuda == "13.0", plan and plan.cuda
    assert not warnings(diags), [d.format() for d in diags]
    no_driver = tmp_path / "p.yaml"
    no_driver.write_text("extends: gpu-h100\nhardware:\n  driver: null\n", encoding="utf-8")
    assert plan_for(str(no_driver)).cuda == "13.2"


# -- base images ------------------------------------------------------------------------------


def test_no_base_image_for_cuda_and_os_suggests_another_os() -> None:
    err = only_error(
        "gpu-a100", "software.os=ubuntu24.04", "software.cuda_source=image", "software.cudnn=false"
    )
    assert "no nvidia/cuda 12.4 base/base image for ubuntu24.04" in err.message
    assert "ubuntu22.04" in err.message
    # the wheels source needs no nvidia/cuda image at all: ubuntu24.04 is fine there
    assert plan_for("gpu-a100", ("software.os=ubuntu24.04",)).runtime_image == "ubuntu:24.04"


@pytest.mark.parametrize(
    ("cuda", "devel", "runtime"),
    [
        (
            "12.2",
            "nvidia/cuda:12.2.2-cudnn8-devel-ubuntu22.04",
            "nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04",
        ),
        (
            "12.3",
            "nvidia/cuda:12.3.2-cudnn9-devel-ubuntu22.04",
            "nvidia/cuda:12.3.2-cudnn9-runtime-ubuntu22.04",
        ),
        (
            "12.4",
            "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04",
            "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
        ),
    ],
)
def test_cudnn_tag_names_resolve_to_real_tags(cuda: str, devel: str, runtime: str) -> None:
    picked = rules.pick_images(cuda, "ubuntu22.04", ("cudnn-devel", "cudnn-runtime"))
    assert picked is not None and (picked.builder, picked.runtime) == (devel, runtime)


def test_image_source_flavours() -> None:
    """nvidia/cuda only where needed: base (cudart, forward compatibility) by default,
    cudnn-runtime for another consumer of cuDNN, devel to build with the toolkit."""
    image = ("software.cuda_source=image",)
    plain = plan_for("gpu-a100", (*image, "software.cudnn=false"))
    assert plain.base_image == plain.runtime_image == "nvidia/cuda:12.4.1-base-ubuntu22.04"
    cudnn = plan_for("gpu-a100", image)
    assert cudnn.runtime_image == "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
    toolkit = plan_for("gpu-a100", ("software.cuda_toolkit=true",))
    assert toolkit.cuda_source == "image" and toolkit.cuda_toolkit
    assert toolkit.base_image == "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
    assert toolkit.runtime_image == "nvidia/cuda:12.4.1-base-ubuntu22.04"
    assert toolkit.require_cuda is None  # nvidia/cuda images set NVIDIA_REQUIRE_CUDA


def test_cuda_121_resolves_the_cudnn8_tag() -> None:
    plan = plan_for(
        "gpu-a100", ("software.torch=2.1.2", "software.cuda=12.1", "software.cuda_toolkit=true")
    )
    assert plan.base_image == "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04"


# -- cpu ----------------------------------------------------------------------------------------


def test_cpu_profile_uses_cpu_wheels_and_no_cuda() -> None:
    plan = plan_for("cpu")
    assert plan.torch_index_url == "https://download.pytorch.org/whl/cpu"
    assert plan.torch_variant == "cpu" and plan.cuda is None and plan.arch_list == ()
    assert (
        not plan.base_image.startswith("nvidia/") and plan.base_image == "python:3.11-slim-bookworm"
    )
    assert plan.min_driver is None and plan.gpu_count == 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("software.cuda=12.4", "software.cuda"),
        ("hardware.gpu=A100", "hardware.gpu"),
        ("hardware.driver=550.54.15", "hardware.driver"),
    ],
)
def test_cuda_or_gpu_on_a_cpu_profile_is_an_error(override: str, key: str) -> None:
    err = only_error("cpu", override)
    assert err.key == key and "accelerator is cpu" in err.message


def test_nvidia_needs_a_gpu_and_a_known_one() -> None:
    assert "hardware.gpu is required" in only_error("cpu", "hardware.accelerator=nvidia").message
    err = only_error("gpu-a100", "hardware.gpu=A1000")
    assert "unknown GPU 'A1000'" in err.message


# -- uncertain facts ------------------------------------------------------------------------------


def test_uncertain_compute_capability_is_a_warning_not_an_error() -> None:
    plan, diags = check("gpu-a10g")
    assert plan is not None and plan.compute_capability == "8.6"
    (warn,) = warnings(diags)
    assert warn.key == "hardware.gpu" and "secondary sources" in warn.message
    assert warn.format().startswith("profiles/gpu-a10g.yaml:5:8: warning:")


# -- resolution ------------------------------------------------------------------------------------


def test_gpu_a100_plan() -> None:
    plan = plan_for("gpu-a100")
    assert (plan.cuda, plan.cuda_full, plan.torch, plan.torch_variant) == (
        "12.4",
        None,  # no nvidia/cuda image: torch's wheels carry CUDA 12.4
        "2.5.1",
        "cu124",
    )
    assert (plan.cuda_source, plan.cuda_toolkit, plan.require_cuda) == (
        "wheels",
        False,
        "cuda>=12.4",
    )
    assert plan.torch_index_url == "https://download.pytorch.org/whl/cu124"
    assert plan.base_image == plan.runtime_image == "ubuntu:22.04"  # one CUDA stack
    assert "one CUDA stack" in plan.cuda_stack
    assert plan.arch_list == ("8.0",) and plan.compute_capability == "8.0"
    assert plan.min_driver == "550.54.14" and plan.gpu == "NVIDIA A100" and plan.gpu_count == 8
    assert plan.python_install == "uv"  # ubuntu22.04 has 3.10
    assert plan.pip == ("numpy", "pillow", "scipy") and plan.apt == ("git",)
    assert plan.image_ref == "aibuild:gpu-a100-torch2.5.1-cu124"


def test_python_install_method() -> None:
    assert plan_for("gpu-h100").python_install == "system"  # ubuntu24.04 + 3.12
    assert plan_for("gpu-a100").python_install == "uv"
    assert plan_for("cpu").python_install == "base"  # python:3.11 image
    assert plan_for("gpu-a100", ("software.python=3.10",)).python_install == "system"


def test_plan_is_frozen_and_deterministic() -> None:
    plan = plan_for("gpu-a100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.cuda = "11.8"  # type: ignore[misc]
    assert plan == plan_for("gpu-a100")
    assert plan.profile_hash != plan_for("gpu-a100", ("training.epochs=9",)).profile_hash


def test_resolve_raises_every_error() -> None:
    with pytest.raises(ProfileError) as info:
        plan_for(
            "gpu-a100",
            ("software.python=3.8", "software.os=ubuntu24.04", "software.cuda_source=image"),
        )
    assert len(info.value.errors) == 2


@pytest.mark.parametrize(
    ("sets", "key", "says"),
    [
        (
            ("software.cuda_toolkit=true", "software.cuda_source=wheels"),
            "software.cuda_source",
            "set software.cuda_source: image",
        ),
        (
            ("software.cuda_source=image", "software.base_image=registry.example.com/x:1"),
            "software.cuda_source",
            "keep one of them",
        ),
    ],
)
def test_cuda_source_conflicts_name_the_fix(sets: tuple[str, ...], key: str, says: str) -> None:
    err = only_error("gpu-h100", *sets)
    assert err.key == key and says in err.message


def test_cuda_source_on_cpu_is_an_error() -> None:
    err = only_error("cpu", "software.cuda_source=image")
    assert err.key == "software.cuda_source" and "accelerator is cpu" in err.message


def test_forward_compatibility_needs_the_image_source_and_a_datacenter_gpu() -> None:
    """CUDA 13 on a 535 driver: not with the wheels; with nvidia/cuda's cuda-compat
    libraries on a datacenter GPU (a warning); never on a GeForce/RTX card."""
    old = ("hardware.driver=535.104.05", "software.cuda=13.0")
    err = only_error("gpu-h100", *old)
    assert "minor-version-compatibility floor" in err.message
    assert "software.cuda_source: image" in err.message
    plan, diags = check("gpu-h100", *old, "software.cuda_source=image")
    assert plan is not None and plan.runtime_image.startswith("nvidia/cuda:13.0")
    assert any("forward compatibility" in w.message for w in warnings(diags))
    consumer = only_error("gpu-rtx5090", *old, "software.cuda_source=image", "software.cuda=13.0")
    assert "datacenter GPUs only" in consumer.message


def test_torch_from_pypi_when_its_own_build_is_the_variant() -> None:
    plan = plan_for("gpu-h100")
    assert (plan.cuda, plan.torch_index_url) == ("13.0", None)
    assert plan_for("gpu-h100", ("software.cuda=12.6",)).torch_index_url.endswith("/cu126")


def test_compile_needs_compilers_in_the_image() -> None:
    assert plan_for("gpu-h100", ("training.compile=true",)).compile_deps
    assert plan_for("cpu", ("training.compile=true",)).compile_deps  # inductor builds C++
    assert not plan_for("gpu-h100").compile_deps


def test_explicit_base_image_is_used_for_both_stages(tmp_path: Path) -> None:
    plan = plan_for("gpu-a100", ("software.base_image=registry.example.com/cuda:12.4",))
    assert plan.base_image == plan.runtime_image == "registry.example.com/cuda:12.4"


@pytest.mark.parametrize("null", ["null", "~", ""])
def test_set_null_unsets_a_version_key(null: str) -> None:
    # `--set software.cuda=null` must mean "derive it", as `cuda: null` does in a file
    plan = plan_for("gpu-h100", (f"hardware.driver={null}",))
    assert plan.driver is None and plan.cuda == "13.2"


@pytest.mark.parametrize("spec", ["~=2.5", ">=2.5", ">=2.0,<3"])
def test_specifier_prefers_a_verified_release(spec: str) -> None:
    # the knowledge base marks 2.14 "not verified as released": a range that also matches
    # released versions must not silently pick it (it did: ~=2.5 -> 2.14.1 + a warning)
    plan, diags = check("cpu", f"software.torch={spec}")
    assert plan is not None, [d.format() for d in diags]
    assert not [d for d in diags if "not verified as released" in d.message], [
        d.format() for d in diags
    ]
    assert plan.torch == "2.13.0"
