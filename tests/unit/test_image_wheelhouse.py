"""`aibuild wheelhouse`'s pip command for a plan (no network needed)."""

from __future__ import annotations

from pathlib import Path

from aibuild.image.wheelhouse import pip_download_command, requirements
from aibuild.profile.resolve import plan_for


def test_cpu_command_targets_the_image() -> None:
    plan = plan_for("cpu", ["software.torch=2.13.0"])
    cmd = pip_download_command(plan, Path("/w"), python="python3")
    assert cmd[:4] == ["python3", "-m", "pip", "download"]
    text = " ".join(cmd)
    assert "--only-binary=:all:" in cmd
    assert "--platform manylinux_2_28_x86_64" in text
    assert "--python-version 3.11 --implementation cp --abi cp311" in text
    assert "-d /w" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "--extra-index-url https://pypi.org/simple" in text
    assert "torch==2.13.0" in cmd
    names = {r.split(">")[0].split("=")[0] for r in requirements(plan)}
    assert {"torch", "click", "pyyaml", "packaging"} <= names


def test_gpu_plan_uses_its_cuda_index_and_python() -> None:
    plan = plan_for("gpu-h100", ["software.cuda=12.6"])  # not PyPI's own torch build
    cmd = pip_download_command(
        plan, Path("/w"), extra_index_urls=["https://mirror/simple"], find_links=["/wheels"]
    )
    text = " ".join(cmd)
    assert plan.torch_index_url == "https://download.pytorch.org/whl/cu126"
    assert f"--index-url {plan.torch_index_url}" in text
    assert f"--abi cp{plan.python.replace('.', '')}" in text
    assert "--extra-index-url https://mirror/simple" in text
    assert "--find-links /wheels" in text
    assert f"torch=={plan.torch}" in cmd


def test_pypi_serves_torch_when_its_own_build_is_the_variant() -> None:
    """torch 2.13.0 on PyPI is the CUDA 13.0 build: PyPI serves it, no extra index."""
    plan = plan_for("gpu-h100")
    assert (plan.cuda, plan.torch_index_url) == ("13.0", None)
    text = " ".join(pip_download_command(plan, Path("/w")))
    assert "--index-url https://pypi.org/simple" in text and "download.pytorch.org" not in text
    assert text.count("--platform") >= 4  # pip matches each manylinux tag exactly
    assert "uv==0.9.30" in text  # the installer the image's RUN steps fetch


def test_runtime_requirements_not_duplicated() -> None:
    plan = plan_for("cpu", ["software.torch=2.13.0", "software.pip=[click==8.1.7]"])
    reqs = requirements(plan)
    assert sum(1 for r in reqs if r.lower().startswith("click")) == 1
