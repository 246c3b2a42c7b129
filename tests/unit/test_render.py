"""Rendering: determinism, layer order, multi-stage, user, env, labels, options, overrides."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from aibuild.errors import RenderError
from aibuild.image.render import dockerfile_quote, render_dockerfile, write_context
from aibuild.profile.plan import RenderOptions
from aibuild.profile.resolve import plan_for


def _load_helpers() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dfparse", Path(__file__).parent / "data" / "dfparse.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dfparse = _load_helpers()


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


@pytest.mark.parametrize("name", ["gpu-a100", "cpu", "gpu-h100"])
def test_layer_order(name: str) -> None:
    builder, runtime = stages(render(name))
    b = [f"{w} {a}" for w, a in builder]
    r = [f"{w} {a}" for w, a in runtime]

    def idx(lines: list[str], pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no instruction matches {pattern!r}"
        return hits[0]

    order_b = [
        idx(b, r"^FROM "),
        idx(b, r"-m venv|uv venv"),
        idx(b, r"torch=="),
        idx(b, r"COPY requirements\.txt"),
        idx(b, r"-r /tmp/aibuild-build/requirements\.txt"),
    ]
    assert order_b == sorted(order_b), b
    if name == "gpu-a100":  # system packages before python in the builder
        assert idx(b, r"apt-get install") < idx(b, r"uv venv")
    order_r = [
        idx(r, r"^FROM "),
        idx(r, r"COPY --from=builder /opt/venv"),
        idx(r, r"COPY runtime/aibuild/"),
        idx(r, r"COPY profile\.yaml"),
        idx(r, r"^USER "),
    ]
    assert order_r == sorted(order_r), r
    if name == "gpu-a100":
        assert idx(r, r"apt-get install .*git") < idx(r, r"COPY --from=builder /opt/venv")


def test_multi_stage_copies_the_venv() -> None:
    text = render("gpu-a100")
    builder, runtime = stages(text)
    assert builder[0] == ("FROM", "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04 AS builder")
    assert runtime[0] == ("FROM", "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS runtime")
    copies = [a for w, a in runtime if w == "COPY" and a.startswith("--from=builder")]
    assert copies == [
        "--from=builder /opt/python /opt/python",
        "--from=builder /opt/venv /opt/venv",
    ]
    assert not any("pip install" in a for w, a in runtime if w == "RUN")


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
    assert re.search(
        r"^FROM nvidia/cuda:12\.\d+\.\d+-cudnn[0-9]*-runtime-ubuntu\S+ AS runtime$", text, re.M
    )
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
        'ai.aibuild.min-driver="550.54.15"',
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


def test_find_links_and_extra_index_url() -> None:
    options = RenderOptions(
        find_links=("https://example.com/wheels/",),
        extra_index_urls=("https://pypi.example.com/simple",),
    )
    builder, _ = stages(render("cpu", options))
    runs = [a for w, a in builder if w == "RUN" and "pip install" in a]
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
        "{% block runtime_extra %}\nRUN echo custom-step\n{% endblock %}\n"
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
    assert "uv python install 3.11" in uv and "COPY --from=builder /opt/python /opt/python" in uv
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
