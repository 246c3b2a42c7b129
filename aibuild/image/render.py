"""Render a ``BuildPlan`` into a build context: Dockerfile, .dockerignore, the resolved
profile, requirements, the aibuild runtime, and (when asked) a wheelhouse and a CA.

All decisions are made here, in Python; ``templates/Dockerfile.j2`` only loops and
branches over flat, sorted values, so the same plan renders byte-identical files.
Users override blocks of the template from their own directory (``--template-dir``)
with ``{% extends "aibuild/Dockerfile.j2" %}``.

Layer order, least to most often changed: base -> system packages -> Python ->
torch -> other requirements -> aibuild runtime -> profile/config. Installs happen
in a builder stage; the runtime stage copies only the venv (and a uv-managed
Python), so no wheelhouse, cache or build CA stays in the image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from aibuild import __version__, contract, labels
from aibuild._resources import package_dir, templates_dir
from aibuild.contract import TRAIN_ENTRYPOINT
from aibuild.errors import RenderError
from aibuild.image.context import copy_project
from aibuild.image.layers import LayerGroup, plan_venv_layers
from aibuild.profile.plan import BuildPlan, RenderOptions
from aibuild.profile.resolve import dev_requirements, image_requirements

BUILD_DIR = "/tmp/aibuild-build"  # build-time scratch (uv, wheelhouse, CA, requirements)
# Pinned: the installer of every Python package (and of a managed CPython when the OS lacks
# one). Fetched inside each RUN that uses it and deleted in the same RUN: never in a layer.
UV_REQUIREMENT = "uv==0.9.30"
UV = f"{BUILD_DIR}/uv/bin/uv"
APT_CLEANUP = (
    "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb "
    "/var/cache/ldconfig/aux-cache /var/log/apt /var/log/dpkg.log /var/log/alternatives.log"
)
# What torch.compile needs at run time: Triton builds its GPU launcher with a C compiler,
# the CPU backend (inductor) builds C++; both need the libc and Python headers.
COMPILE_APT = ("g++", "gcc", "libc6-dev")
DOCKERIGNORE = "**/__pycache__\n**/*.pyc\n"
# Not copied into the image's runtime: the image needs the code, not the host-side assets.
RUNTIME_EXCLUDE = {"templates", "profiles", "__pycache__"}
# The stage the training image ends in when a dev stage follows it (``dev:``): builds of the
# training image target it, builds of the dev image target DEV_STAGE.
TRAIN_STAGE = "train"
DEV_STAGE = "dev"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def dockerfile_quote(value: object) -> str:
    """Quote a value for an ENV or LABEL instruction.

    Docker's parser reads "..." with backslash escapes and expands $VAR in ENV and
    LABEL, so backslash, double quote and $ are escaped. Control characters (a newline
    would start a new instruction) are refused: the validator never lets one through,
    and this is the second line of defence.
    """
    text = str(value)
    if _CONTROL.search(text):
        raise RenderError(f"refusing to render a value with a control character: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def shell_quote(value: object) -> str:
    text = str(value)
    if _CONTROL.search(text):
        raise RenderError(f"refusing to render a value with a control character: {text!r}")
    return shlex.quote(text)


def _environment(template_dir: str | None) -> Any:
    import jinja2

    shipped = jinja2.FileSystemLoader(str(templates_dir()))
    loaders: list[jinja2.BaseLoader] = []
    if template_dir:
        if not Path(template_dir).is_dir():
            raise RenderError(f"template directory not found: {template_dir}")
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders += [jinja2.PrefixLoader({"aibuild": shipped}), shipped]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["dq"] = dockerfile_quote
    env.filters["sh"] = shell_quote
    return env


def _labels(plan: BuildPlan) -> list[tuple[str, str]]:
    found = {
        labels.OCI_TITLE: plan.profile_name,
        labels.OCI_DESCRIPTION: plan.description,
        labels.OCI_VERSION: plan.image_tag,
        labels.OCI_BASE_NAME: plan.runtime_image,
        labels.VERSION: __version__,
        labels.PROFILE: plan.profile_name,
        labels.PROFILE_HASH: plan.profile_hash,
        labels.ACCELERATOR: plan.accelerator,
        labels.TORCH: plan.torch,
        labels.TORCH_VARIANT: plan.torch_variant,
        labels.PYTHON: plan.python,
        labels.CUDA: plan.cuda or "none",
        labels.ARCH_LIST: " ".join(plan.arch_list) or "none",
        labels.MIN_DRIVER: plan.min_driver or "none",
        labels.GPU: plan.gpu or "none",
    }
    return sorted(found.items())


def _summary(plan: BuildPlan) -> list[str]:
    lines = [
        f"torch {plan.torch} ({plan.torch_variant}), Python "
        f"{plan.python} ({plan.python_install}), {plan.os}"
    ]
    if plan.accelerator == "nvidia":
        lines.append(
            f"{plan.gpu} x{plan.gpu_count}: compute capability "
            f"{plan.compute_capability}, driver >= {plan.min_driver}"
        )
    lines.append(plan.cuda_stack)
    return lines


def _pip_install(args: list[str]) -> str:
    return " ".join(["pip", "install", *(shell_quote(a) for a in args)])


def _uv(args: list[str], index_flags: list[str]) -> str:
    """One RUN's worth of ``uv pip install ARGS``: fetch uv into the build scratch with the
    venv's pip, install, delete uv again; nothing of the installer stays in the layer."""
    target = ["--target", f"{BUILD_DIR}/uv"]
    fetch = _pip_install(
        ["-q", "--no-cache-dir", "--no-compile", *target, *index_flags, UV_REQUIREMENT]
    )
    install = " ".join([UV, "pip", "install", *(shell_quote(a) for a in args)])
    return f"{fetch} \\\n && {install} \\\n && rm -rf {BUILD_DIR}/uv"


def _layer_installs(
    groups: list[LayerGroup],
    *,
    index_flags: list[str],
    torch_flags: list[str],
    constraints: bool,
    reproducible: bool,
    clean_build_dir: bool,
) -> list[tuple[str, str]]:
    """(comment, RUN command) for each of the venv's layer groups: ``uv pip install
    --no-deps`` of the group's exact pins, then bytecode for the files this RUN wrote (and
    only those: recompiling earlier layers' files would copy them into this layer). The
    step after them checks that the venv is complete (``pip check``) and removes the build
    scratch."""
    flags = ["--no-cache", "--python", "/opt/venv/bin/python", "--no-deps"]
    if constraints:
        flags += ["-c", f"{BUILD_DIR}/constraints.txt"]
    mark = f"{BUILD_DIR}/uv/.start"
    mode = " --invalidation-mode unchecked-hash" if reproducible else ""
    # compileall compiles a list (-i) in one process; xargs spreads it over the cores
    compile_new = (
        f"(find /opt/venv -name '*.py' -cnewer {mark} -print0 "
        f'| xargs -0 -r -n 200 -P "$(nproc)" /opt/venv/bin/python -m compileall -q{mode} '
        "> /dev/null || true)"
    )
    fetch = _pip_install(
        ["-q", "--no-cache-dir", "--no-compile", "--target", f"{BUILD_DIR}/uv", *index_flags,
         UV_REQUIREMENT]
    )  # fmt: skip
    found = []
    for number, group in enumerate(groups, 1):
        sources = torch_flags if group.torch_index else index_flags
        pins = [p.requirement for p in group.pins]
        install = " ".join(
            [UV, "pip", "install", *(shell_quote(a) for a in [*flags, *sources, *pins])]
        )
        steps = [fetch, f"touch {mark}", install, compile_new, f"rm -rf {BUILD_DIR}/uv"]
        names = ", ".join(f"{p.name} {p.version}" for p in group.pins[:4])
        more = f" and {len(group.pins) - 4} more" if len(group.pins) > 4 else ""
        comment = f"venv layer {number}/{len(groups)}: {group.title}: {names}{more}"
        found.append((comment, " \\\n && ".join(steps)))
    if groups:  # a step of its own: no group's layer depends on being the last one
        check = ["/opt/venv/bin/python -m pip check > /dev/null"]
        check += [f"rm -rf {BUILD_DIR}"] if clean_build_dir else []
        found.append(("the venv is complete (pip check)", " \\\n && ".join(check)))
    return found


def install_sources(plan: BuildPlan, options: RenderOptions) -> tuple[list[str], list[str]]:
    """(flags for every package, flags for torch): where packages come from. A wheelhouse
    is the only source (copied into the build scratch, or served at ``wheelhouse_url``);
    otherwise PyPI, and torch from its variant's index unless PyPI's torch is that build."""
    index: list[str] = []
    if options.wheelhouse_url:
        index += ["--no-index", "--find-links", options.wheelhouse_url]
    elif options.wheelhouse:
        index += ["--no-index", "--find-links", f"{BUILD_DIR}/wheelhouse"]
    for url in options.find_links:
        index += ["--find-links", url]
    torch = list(index)
    if not options.wheelhouse and plan.torch_index_url:
        torch = ["--index-url", plan.torch_index_url, *index]
    for url in options.extra_index_urls:
        index += ["--extra-index-url", url]
        torch += ["--extra-index-url", url]
    return index, torch


def two_stages(plan: BuildPlan, options: RenderOptions) -> bool:
    """Whether the image needs a builder stage. One stage writes the venv once, in the
    image itself; a builder is needed only for what must not stay in the image (a
    compiler toolkit, a CA file, a copied-in wheelhouse) or a different base to build on."""
    return (
        plan.cuda_toolkit
        or bool(options.ca_cert)
        or bool(options.wheelhouse and not options.wheelhouse_url)
        or plan.base_image != plan.runtime_image
    )


def train_target(plan: BuildPlan) -> str | None:
    """The build target of the training image: None (the last stage) unless a dev stage
    follows it."""
    return TRAIN_STAGE if plan.dev_jupyter else None


def _dev_install(
    plan: BuildPlan, options: RenderOptions, two: bool, uv_flags: list[str], index: list[str]
) -> tuple[list[tuple[str, str]], str]:
    """(COPYs, RUN command) of the dev stage: JupyterLab into /opt/venv from the image's own
    package sources. In a two-stage image the build CA and a copied wheelhouse are in the
    builder only, so the dev stage copies what it needs (this image is for local use: the
    copied files stay in its layer), then deletes the build scratch in the same RUN."""
    copies: list[tuple[str, str]] = []
    prefix = ""
    if two and options.ca_cert:
        copies.append(("build-ca.pem", f"{BUILD_DIR}/ca.pem"))
        ca = f"{BUILD_DIR}/ca.pem"
        prefix = f"export PIP_CERT={ca} SSL_CERT_FILE={ca} UV_NATIVE_TLS=1 \\\n && "
    if two and options.wheelhouse and not options.wheelhouse_url:
        copies.append(("wheelhouse/", f"{BUILD_DIR}/wheelhouse/"))
    if options.constraints:
        copies.append(("constraints.txt", f"{BUILD_DIR}/"))
    install = _uv([*uv_flags, *index, *dev_requirements(plan)], index)
    return copies, f"{prefix}{install} \\\n && rm -rf {BUILD_DIR}"


def _apt_packages(plan: BuildPlan, two: bool) -> tuple[list[str], list[str]]:
    """(builder stage, image) Debian packages: Python's (the OS's or uv's needs), the
    toolkit's compilers (builder only), torch.compile's compilers and the profile's own;
    with one stage, the image installs the builder's too."""
    system_python = plan.python_install == "system"
    python_apt: list[str] = []
    if plan.python_install in ("system", "uv"):
        python_apt = ["python3", "python3-venv"]
        if plan.python_install == "uv":
            python_apt.append("ca-certificates")
    builder_apt = list(python_apt)
    if plan.cuda_toolkit:
        builder_apt += ["build-essential", *(["python3-dev"] if system_python else [])]
    runtime_apt = set(plan.apt)
    if system_python:
        runtime_apt.add("python3")
    if plan.compile_deps:
        runtime_apt.update(COMPILE_APT)
        if system_python:
            runtime_apt.add("python3-dev")
    if not two:
        runtime_apt.update(builder_apt)
    return builder_apt, sorted(runtime_apt)


def _image_env(plan: BuildPlan) -> list[tuple[str, str]]:
    """The image's own ENV, sorted; a key the profile's software.env sets is the profile's."""
    image_env: list[tuple[str, str]] = [
        (contract.ENV_OUTPUT, contract.OUTPUT_DIR),
        (contract.ENV_PROFILE, contract.PROFILE_PATH),
        ("PYTHONUNBUFFERED", "1"),
    ]
    if plan.accelerator == "nvidia":
        image_env += [
            ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("TORCH_CUDA_ARCH_LIST", ";".join(plan.arch_list)),
        ]
    if plan.require_cuda:
        # What `docker run --gpus` and Kubernetes need from an image that is not
        # nvidia/cuda: the toolkit refuses a too-old driver at start (NVIDIA_REQUIRE_CUDA)
        # and GKE-style driver mounts are found. Never CUDA_VERSION: the toolkit would
        # then treat the image as a legacy CUDA image.
        image_env += [
            ("LD_LIBRARY_PATH", "/usr/local/nvidia/lib:/usr/local/nvidia/lib64"),
            ("NVIDIA_REQUIRE_CUDA", plan.require_cuda),
        ]
    user_keys = {key for key, _ in plan.env}
    return sorted((k, v) for k, v in image_env if k not in user_keys)


def template_context(plan: BuildPlan, options: RenderOptions) -> dict[str, Any]:
    """Everything the template needs, decided: flat, sorted values."""
    two = two_stages(plan, options)
    builder_apt, runtime_apt = _apt_packages(plan, two)
    python_exe = "python3" if plan.python_install == "system" else "python"
    index_flags, torch_flags = install_sources(plan, options)
    uv_flags = ["--no-cache", "--python", "/opt/venv/bin/python"]
    uv_flags += [] if options.reproducible else ["--compile-bytecode"]
    if options.constraints:
        uv_flags += ["-c", f"{BUILD_DIR}/constraints.txt"]
    requirements = f"{BUILD_DIR}/requirements.txt"
    image_env = _image_env(plan)
    builder_env: list[tuple[str, str]] = []
    if plan.cuda_toolkit:
        builder_env = [
            ("CUDA_HOME", "/usr/local/cuda"),
            ("TORCH_CUDA_ARCH_LIST", ";".join(plan.arch_list)),
        ]
    remove_users = ["ubuntu"] if plan.os == "ubuntu24.04" else []
    project = plan.project
    dev_copies, dev_install = _dev_install(plan, options, two, uv_flags, index_flags)
    groups = plan_venv_layers(plan, options) or []
    layers = _layer_installs(
        groups,
        index_flags=index_flags,
        torch_flags=torch_flags,
        constraints=bool(options.constraints),
        reproducible=options.reproducible,
        clean_build_dir=not two,
    )
    torch_count = sum(1 for g in groups if g.torch_index)
    return {
        "version": __version__,
        "plan": plan,
        "hash12": plan.profile_hash[:12],
        "summary": _summary(plan),
        "two_stages": two,
        "build_dir": BUILD_DIR,
        "ca_cert": bool(options.ca_cert),
        "reproducible": options.reproducible,
        "source_date_epoch": options.source_date_epoch or 0,
        "wheelhouse_copy": bool(options.wheelhouse and not options.wheelhouse_url),
        "builder_apt": builder_apt,
        "runtime_apt": runtime_apt,
        "builder_env": builder_env,
        "apt_cleanup": APT_CLEANUP,
        "python_exe": python_exe,
        "uv_install": _pip_install(["--no-cache-dir", *index_flags, UV_REQUIREMENT]),
        "torch_install": _uv([*uv_flags, *torch_flags, f"torch=={plan.torch}"], index_flags),
        "requirements_install": _uv([*uv_flags, *index_flags, "-r", requirements], index_flags),
        "constraints_file": bool(options.constraints),
        "torch_layers": layers[:torch_count],
        "package_layers": layers[torch_count:],
        "image_env": image_env,
        "path_extra": "/usr/local/nvidia/bin:" if plan.require_cuda else "",
        "site_packages": f"/opt/venv/lib/python{plan.python}/site-packages",
        "remove_users": remove_users,
        "labels": _labels(plan),
        "project": project,
        "project_labels": list(project.labels) if project else [],
        "workdir": plan.workdir,
        "entrypoint": json.dumps(list(project.command if project else ()) or TRAIN_ENTRYPOINT),
        "dev": plan.dev_jupyter,
        "env_stage": "runtime" if two else "image",
        "dev_copies": dev_copies,
        "dev_install": dev_install,
        # the image contract (aibuild.contract): user, directories, profile path
        "user": contract.USER,
        "uid": contract.UID,
        "user_spec": contract.USER_SPEC,
        "workspace": contract.WORKSPACE,
        "output_dir": contract.OUTPUT_DIR,
        "runtime_dir": contract.RUNTIME_DIR,
        "profile_path": contract.PROFILE_PATH,
    }


def render_dockerfile(plan: BuildPlan, options: RenderOptions | None = None) -> str:
    """The Dockerfile text for PLAN."""
    import jinja2

    options = options or RenderOptions()
    env = _environment(options.template_dir)
    try:
        template = env.get_template("Dockerfile.j2")
        text: str = template.render(**template_context(plan, options))
    except jinja2.TemplateError as exc:
        where = (
            f" ({exc.filename}:{exc.lineno})" if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        )
        raise RenderError(f"cannot render the Dockerfile: {exc}{where}") from None
    # Collapse the blank lines left by empty blocks: deterministic, readable output.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def requirements_text(plan: BuildPlan) -> str:
    own = "software.pip and its project's requirements" if plan.project else "software.pip"
    lines = [f"# Generated by aibuild: the profile's {own} plus the aibuild runtime's needs."]
    lines += image_requirements(plan)
    return "\n".join(lines) + "\n"


def _copy_tree(src: Path, dst: Path, exclude: set[str]) -> None:
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in exclude)
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            shutil.copyfile(Path(root) / name, dst / rel / name)


# Everything write_context may put in a context directory: the only names it ever replaces.
CONTEXT_ENTRIES = frozenset(
    {
        "Dockerfile",
        ".dockerignore",
        "profile.yaml",
        "requirements.txt",
        "constraints.txt",
        "build-ca.pem",
        "runtime",
        "wheelhouse",
        "project",
    }
)
GENERATED_MARK = "# Generated by aibuild"


def _is_ours(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a build context aibuild wrote: its Dockerfile carries the
    generated header and every entry is one aibuild writes."""
    try:
        with (out_dir / "Dockerfile").open("rb") as handle:
            first = handle.readline(200)
    except OSError:
        return False
    names = {entry.name for entry in out_dir.iterdir()}
    return first.startswith(GENERATED_MARK.encode()) and names <= CONTEXT_ENTRIES


def check_context_dir(out_dir: Path) -> None:
    """Refuse (RenderError), without touching anything, a context directory that
    ``claim_context_dir`` would refuse: checked before a build contacts the engine."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise RenderError(f"{out_dir} exists and is not a directory: give a new directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_ours(out_dir):
        entries = sorted(out_dir.iterdir())
        foreign = [e.name for e in entries if e.name not in CONTEXT_ENTRIES] or ["Dockerfile"]
        shown = ", ".join(repr(n) for n in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise RenderError(
            f"{out_dir} is not empty and is not a build context aibuild wrote (it holds "
            f"{shown}): give an empty or new directory; aibuild never deletes files it "
            "did not write"
        )


def claim_context_dir(out_dir: Path) -> None:
    """Make ``out_dir`` ready for a build context without losing anyone's files: a new or
    empty directory is used as it is; one that holds an earlier context aibuild wrote is
    emptied of it; anything else is refused (RenderError), whatever it holds."""
    check_context_dir(out_dir)
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    for entry in sorted(out_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_context(plan: BuildPlan, out_dir: Path, options: RenderOptions | None = None) -> Path:
    """Write the whole build context for PLAN into OUT_DIR: a new or empty directory, or
    one holding an earlier context aibuild wrote (``claim_context_dir``)."""
    options = options or RenderOptions()
    out_dir = Path(out_dir)
    dockerfile = render_dockerfile(plan, options)
    try:
        claim_context_dir(out_dir)
        (out_dir / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        (out_dir / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
        (out_dir / "profile.yaml").write_text(plan.profile_yaml, encoding="utf-8")
        (out_dir / "requirements.txt").write_text(requirements_text(plan), encoding="utf-8")
        if options.constraints:
            (out_dir / "constraints.txt").write_text(
                "\n".join(sorted(options.constraints)) + "\n", encoding="utf-8"
            )
        _copy_tree(package_dir(), out_dir / "runtime" / "aibuild", RUNTIME_EXCLUDE)
        if plan.project is not None:
            copy_project(Path(plan.project.path), plan.project.exclude, out_dir / "project")
        if options.wheelhouse and not options.wheelhouse_url:  # served: not in the context
            source = Path(options.wheelhouse)
            if not source.is_dir():
                raise RenderError(f"wheelhouse directory not found: {source}")
            (out_dir / "wheelhouse").mkdir()
            for wheel in sorted(source.iterdir()):
                if wheel.is_file():
                    target = out_dir / "wheelhouse" / wheel.name
                    try:  # hard links are instant for a multi-GB wheelhouse on the same disk
                        os.link(wheel, target)
                    except OSError:
                        shutil.copyfile(wheel, target)
        if options.ca_cert:
            try:
                shutil.copyfile(options.ca_cert, out_dir / "build-ca.pem")
            except OSError as exc:
                raise RenderError(
                    f"cannot read the CA certificate {options.ca_cert}: {exc.strerror}"
                ) from None
    except OSError as exc:
        raise RenderError(f"cannot write the build context to {out_dir}: {exc}") from None
    return out_dir
