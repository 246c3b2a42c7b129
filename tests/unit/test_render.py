"""Rendering: determinism, layer order, multi-stage, user, env, labels, options, overrides."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from aibuild.errors import RenderError
from aibuild.image.render import dockerfile_quote, render_dockerfile, write_context
from aibuild.profile.plan import RenderOptions
from aibuild.profile.resolve import plan_for
from tests.unit.conftest import dfparse


def render(name: str, options: RenderOptions | None = None, *overrides: str) -> str:
    return render_dockerfile(plan_for(name, overrides, options), options)


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in dfparse.instructions(text):
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_render_twice_is_byte_identical() -> None:
    assert render("gpu-a100").encode() == render("gpu-a100").encode()


def test_write_context_twice_gives_identical_trees(tmp_path: Path) -> None:
    plan = plan_for("gpu-a100")
    write_context(plan, tmp_path / "a")
    first = tree_hashes(tmp_path / "a")
    write_context(plan, tmp_path / "a")
    write_context(plan_for("gpu-a100"), tmp_path / "b")
    assert first == tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    assert {"Dockerfile", ".dockerignore", "profile.yaml", "requirements.txt"} <= set(first)
    assert "runtime/aibuild/cli/__init__.py" in first
    assert not [
        k
        for k in first
        if k.endswith(".pyc") or "__pycache__" in k or k.startswith("runtime/aibuild/templates")
    ]


def test_context_files_content(tmp_path: Path) -> None:
    plan = plan_for("gpu-a100")
    write_context(plan, tmp_path)
    assert (tmp_path / "Dockerfile").read_text() == render_dockerfile(plan)
    reqs = (tmp_path / "requirements.txt").read_text().splitlines()
    assert {"numpy", "scipy", "pillow", "click>=8.1"} <= set(reqs)
    assert "torch" not in " ".join(reqs)
    assert "precision: bf16" in (tmp_path / "profile.yaml").read_text()


def idx(lines: list[str], pattern: str) -> int:
    hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert hits, f"no instruction matches {pattern!r}"
    return hits[0]


def ordered(lines: list[str], patterns: list[str]) -> None:
    found = [idx(lines, p) for p in patterns]
    assert found == sorted(found), (patterns, lines)


@pytest.mark.parametrize("name", ["gpu-a100", "cpu", "gpu-h100"])
def test_one_stage_layer_order(name: str) -> None:
    """Least to most often changed, and the venv written once, in the image itself."""
    (image,) = stages(render(name))  # one stage: nothing has to stay out of the image
    lines = [f"{w} {a}" for w, a in image]
    ordered(
        lines,
        [
            r"^FROM .* AS image$",
            r"useradd",
            r"-m venv|uv venv",
            r"torch==",
            r"COPY requirements\.txt",
            r"-r /tmp/aibuild-build/requirements\.txt",
            r"COPY runtime/aibuild/",
            r"COPY profile\.yaml",
            r"^USER ",
        ],
    )
    if name == "gpu-a100":  # one apt step, with the profile's packages, before Python
        ordered(lines, [r"apt-get install .*git", r"useradd", r"uv venv"])
        assert sum(1 for line in lines if "apt-get install" in line) == 1
    assert not any("COPY --from" in line for line in lines)


def test_a_builder_stage_only_for_what_must_stay_out() -> None:
    """A toolkit (nvcc), a build CA or a copied-in wheelhouse: those go in a builder
    stage and the image copies only the venv."""
    cases: list[tuple[RenderOptions | None, tuple[str, ...]]] = [
        (None, ("software.cuda_toolkit=true",)),
        (RenderOptions(ca_cert="/etc/hosts"), ()),
        (RenderOptions(wheelhouse="/tmp"), ()),
    ]
    for options, sets in cases:
        builder, runtime = stages(render("gpu-h100", options, *sets))
        copies = [a for w, a in runtime if w == "COPY" and a.startswith("--from=builder")]
        assert copies == ["--from=builder /opt/venv /opt/venv"], (options, sets)
        assert not any("pip install" in a for w, a in runtime if w == "RUN")
        b = [f"{w} {a}" for w, a in builder]
        ordered(b, [r"^FROM ", r"-m venv", r"torch==", r"-r /tmp/aibuild-build/requirements"])
    served = RenderOptions(wheelhouse="/tmp", wheelhouse_url="http://127.0.0.1:31234/")
    (image,) = stages(render("cpu", served))
    text = " ".join(a for _, a in image)
    assert "--no-index --find-links http://127.0.0.1:31234/ torch==2.13.0" in text
    assert "wheelhouse/" not in text  # served, not copied: not in the context, not in a layer


def test_toolkit_builds_on_devel_and_runs_on_base() -> None:
    text = render("gpu-h100", None, "software.cuda_toolkit=true")
    builder, runtime = stages(text)
    assert re.fullmatch(
        r"nvidia/cuda:13\.0\.\d+-cudnn-devel-ubuntu24\.04 AS builder", builder[0][1]
    )
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-base-ubuntu24\.04 AS runtime", runtime[0][1])
    builder_text = " ".join(a for _, a in builder)
    assert 'CUDA_HOME="/usr/local/cuda"' in builder_text and "build-essential" in builder_text
    assert "NVIDIA_REQUIRE_CUDA" not in text  # nvidia/cuda sets its own


@pytest.mark.parametrize("name", ["gpu-a100", "cpu", "gpu-h100x8"])
def test_non_root_user_last(name: str) -> None:
    ins = dfparse.instructions(render(name))
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert [w for w, _ in ins][-3:] == ["USER", "WORKDIR", "ENTRYPOINT"]


def test_nvidia_env_and_arch_list() -> None:
    text = render("gpu-a100")
    assert 'TORCH_CUDA_ARCH_LIST="8.0"' in text
    assert 'NVIDIA_VISIBLE_DEVICES="all"' in text
    assert 'NVIDIA_DRIVER_CAPABILITIES="compute,utility"' in text
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=12.4"' in text  # the toolkit refuses a too-old driver
    assert 'LD_LIBRARY_PATH="/usr/local/nvidia/lib:/usr/local/nvidia/lib64"' in text
    assert "ENV PATH=/usr/local/nvidia/bin:/opt/venv/bin:$PATH" in text
    assert "CUDA_VERSION" not in text  # the toolkit would treat the image as legacy
    assert re.search(r"^FROM ubuntu:22\.04 AS image$", text, re.M)  # one CUDA stack
    assert "nvidia/cuda" not in text
    cpu = render("cpu")
    assert "NVIDIA_" not in cpu and "TORCH_CUDA_ARCH_LIST" not in cpu and "nvidia/cuda" not in cpu
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in cpu


def test_labels() -> None:
    (label,) = [a for w, a in dfparse.instructions(render("gpu-a100")) if w == "LABEL"]
    for key in (
        'org.opencontainers.image.title="gpu-a100"',
        "org.opencontainers.image.version=",
        "org.opencontainers.image.description=",
        'ai.aibuild.profile="gpu-a100"',
        "ai.aibuild.profile-hash=",
        'ai.aibuild.cuda="12.4"',
        'ai.aibuild.torch="2.5.1"',
        'ai.aibuild.arch-list="8.0"',
        'ai.aibuild.min-driver="550.54.14"',  # CUDA 12.4.0's: the wheels' update is theirs
        'org.opencontainers.image.base.name="ubuntu:22.04"',
    ):
        assert key in label, key


@pytest.mark.parametrize("name", ["gpu-a100", "cpu"])
def test_no_buildkit_only_syntax(name: str) -> None:
    options = RenderOptions(wheelhouse="/tmp", ca_cert="/etc/hosts", reproducible=True)
    text = render(name, options)
    assert not re.search(r"RUN\s+--mount", text)
    assert not re.search(r"COPY\s+--(chmod|link|parents|exclude)", text)
    assert not re.search(r"^#\s*(syntax|escape|check)\s*=", text, re.M | re.I)
    assert "<<" not in text  # heredocs


def test_build_only_files_stay_in_the_builder() -> None:
    options = RenderOptions(wheelhouse="/tmp", ca_cert="/etc/hosts")
    builder, runtime = stages(render("gpu-a100", options))
    builder_text = " ".join(a for _, a in builder)
    runtime_text = " ".join(a for _, a in runtime)
    assert "wheelhouse" in builder_text and "ca.pem" in builder_text
    assert "--no-index --find-links /tmp/aibuild-build/wheelhouse" in builder_text
    assert "PIP_CERT=/tmp/aibuild-build/ca.pem" in builder_text
    assert "wheelhouse" not in runtime_text and "ca.pem" not in runtime_text
    assert "/tmp/aibuild-build" not in runtime_text
    assert "SSL_CERT_FILE" not in runtime_text


def test_build_settings_are_args_not_image_env() -> None:
    """pip's and Python's build-time settings are ARGs: none reaches the image's config."""
    ins = dfparse.instructions(render("cpu"))
    env = " ".join(a for w, a in ins if w == "ENV")
    assert "PIP_" not in env and "PYTHONDONTWRITEBYTECODE" not in env
    args = " ".join(a for w, a in ins if w == "ARG")
    assert "PIP_NO_CACHE_DIR=1" in args and "PYTHONDONTWRITEBYTECODE=1" in args


def test_uv_installs_and_leaves_no_trace() -> None:
    runs = [a for w, a in dfparse.instructions(render("cpu")) if w == "RUN" and "uv pip" in a]
    assert len(runs) == 2  # torch, then the requirements
    for run in runs:
        assert "--target /tmp/aibuild-build/uv uv==0.9.30" in run  # fetched in this RUN ...
        assert "&& rm -rf /tmp/aibuild-build/uv" in run  # ... and gone after it
        assert "--no-cache" in run and "--compile-bytecode" in run
    assert runs[-1].endswith("&& rm -rf /tmp/aibuild-build")  # one stage: no scratch left


def test_compile_brings_a_compiler_and_headers() -> None:
    plain = render("gpu-h100")
    compiled = render("gpu-h100", None, "training.compile=true")
    assert "gcc" not in plain
    (apt,) = [a for w, a in dfparse.instructions(compiled) if w == "RUN" and "apt-get" in a]
    for package in ("g++", "gcc", "libc6-dev", "python3-dev"):  # Triton and inductor
        assert f" {package}" in apt
    assert "/var/cache/apt/archives/*.deb" in apt  # no downloaded .deb stays in the layer


def test_find_links_and_extra_index_url() -> None:
    options = RenderOptions(
        find_links=("https://example.com/wheels/",),
        extra_index_urls=("https://pypi.example.com/simple",),
    )
    (image,) = stages(render("cpu", options))
    runs = [a for w, a in image if w == "RUN" and "uv pip install" in a]
    torch_run = next(a for a in runs if "torch==" in a)
    req_run = next(a for a in runs if "requirements.txt" in a)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    for run in (torch_run, req_run):
        assert "--find-links https://example.com/wheels/" in run
        assert "--extra-index-url https://pypi.example.com/simple" in run


def test_wheelhouse_and_ca_cert_in_context(tmp_path: Path) -> None:
    wheels = tmp_path / "wh"
    wheels.mkdir()
    (wheels / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    out = write_context(
        plan_for("cpu"), tmp_path / "ctx", RenderOptions(wheelhouse=str(wheels), ca_cert=str(ca))
    )
    assert (out / "wheelhouse" / "x-1-py3-none-any.whl").read_bytes() == b"wheel"
    assert (out / "build-ca.pem").read_text() == "PEM"
    # rendering again without them removes the stale files
    write_context(plan_for("cpu"), out)
    assert not (out / "wheelhouse").exists() and not (out / "build-ca.pem").exists()


def test_missing_wheelhouse_is_a_render_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError):
        write_context(
            plan_for("cpu"), tmp_path / "ctx", RenderOptions(wheelhouse=str(tmp_path / "nope"))
        )


def test_user_template_overrides_one_block(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile.j2").write_text(
        '{% extends "aibuild/Dockerfile.j2" %}\n'
        "{% block extra %}\nRUN echo custom-step\n{% endblock %}\n"
    )
    options = RenderOptions(template_dir=str(tmp_path))
    text = render("gpu-a100", options)
    base = render("gpu-a100")
    assert "RUN echo custom-step" in text and "custom-step" not in base
    kw, base_kw = dfparse.keywords(text), dfparse.keywords(base)
    assert len(kw) == len(base_kw) + 1
    ins = dfparse.instructions(text)
    pos = ins.index(("RUN", "echo custom-step"))
    assert ins[pos - 1][0] == "RUN" and "aibuild.pth" in ins[pos - 1][1]
    assert ins[pos + 1] == ("COPY", "profile.yaml /etc/aibuild/profile.yaml")


def test_bad_template_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile.j2").write_text(
        '{% extends "aibuild/Dockerfile.j2" %}{% block x %}{{ nope }}{% endblock %}'
        "{% block header %}{{ undefined_thing }}{% endblock %}"
    )
    with pytest.raises(RenderError):
        render("cpu", RenderOptions(template_dir=str(tmp_path)))
    with pytest.raises(RenderError):
        render("cpu", RenderOptions(template_dir=str(tmp_path / "missing")))


def test_python_install_methods_render() -> None:
    system = render("gpu-h100")
    assert "RUN python3 -m venv /opt/venv" in system and "uv python install" not in system
    uv = render("gpu-a100")
    assert "uv python install 3.11" in uv and "COPY --from" not in uv  # one stage
    builder = render("gpu-a100", RenderOptions(ca_cert="/etc/hosts"))
    assert "COPY --from=builder /opt/python /opt/python" in builder
    base = render("cpu")
    assert "RUN python -m venv /opt/venv" in base and "apt-get" not in base


def test_ubuntu2404_removes_the_default_user() -> None:
    assert "userdel --remove ubuntu" in render("gpu-h100")
    assert "userdel" not in render("gpu-a100")


def test_user_env_overrides_image_env_and_is_quoted() -> None:
    text = render("cpu", None, "software.env={PYTHONUNBUFFERED: '0', X: 'a \"b\" $HOME \\'}")
    assert 'X="a \\"b\\" \\$HOME \\\\"' in text
    assert text.count("PYTHONUNBUFFERED=") == 1 and 'PYTHONUNBUFFERED="0"' in text


def test_dockerfile_quote() -> None:
    assert dockerfile_quote('a"b$c\\') == '"a\\"b\\$c\\\\"'
    with pytest.raises(RenderError):
        dockerfile_quote("a\nb")


def test_a_served_wheelhouse_stays_out_of_the_context(tmp_path: Path) -> None:
    """Served on loopback, the wheelhouse is not sent with the context (3 GB for CUDA)."""
    wheels = tmp_path / "wh"
    wheels.mkdir()
    (wheels / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    served = RenderOptions(wheelhouse=str(wheels), wheelhouse_url="http://127.0.0.1:31234/")
    out = write_context(plan_for("cpu"), tmp_path / "ctx", served)
    assert not (out / "wheelhouse").exists()
    copied = write_context(
        plan_for("cpu"), tmp_path / "ctx2", RenderOptions(wheelhouse=str(wheels))
    )
    assert (copied / "wheelhouse" / "x-1-py3-none-any.whl").is_file()
