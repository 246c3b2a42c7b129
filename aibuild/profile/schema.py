"""The profile schema (v1): every key, its type, default and meaning, in one table.

The validator walks this table; the README's profile reference is generated
from it (``python -m aibuild.profile.schema`` prints the markdown). The ``training:``
section belongs to the trainer and is checked by ``aibuild.train.config``.

Every string that can reach a Dockerfile is checked here against a strict
pattern, so that a newline, quote, ``$(`` or backtick can never become a new
instruction or shell command.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from aibuild import contract
from aibuild import knowledge as kb
from aibuild.errors import Diagnostic, did_you_mean, shown
from aibuild.oci import reference

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Debian policy 5.6.1: lowercase letters, digits, + - . ; at least two chars; starts alnum.
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DRIVER_RE = re.compile(r"^\d{3}(\.\d{1,3}){1,2}$")
MINOR_RE = re.compile(r"^\d+\.\d+$")
SIZE_RE = re.compile(r"^(\d+)([bkmgt]?)$", re.IGNORECASE)
GPUS_RE = re.compile(r"^(all|none|\d+|device=\d+(,\d+)*)$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

OS_CHOICES = ("ubuntu20.04", "ubuntu22.04", "ubuntu24.04", "debian12")
# project.workdir: an absolute path of plain names (it reaches WORKDIR and COPY, which
# expand $VAR), never one of the image's own directories.
WORKDIR_RE = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9._-]*)+/?$")
RESERVED_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin",
    "/sys", "/usr", "/var", "/opt/venv", "/opt/python", contract.RUNTIME_DIR,
    contract.OUTPUT_DIR, contract.DATA_DIR, "/tmp", "/root",
)  # fmt: skip
MAX_COMMAND_ARGS = 256
MAX_EXCLUDES = 1000


def _text(value: Any, maxlen: int = 300) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if CONTROL_RE.search(value):
        return "must not contain newlines or control characters"
    if len(value) > maxlen:
        return f"must be at most {maxlen} characters"
    return None


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string ({what})"
        if not regex.fullmatch(value):
            return f"{shown(value)} is not {what}"
        return None

    return check


def _torch_spec(value: Any) -> str | None:
    if not isinstance(value, str) or CONTROL_RE.search(value):
        return 'must be a version ("2.5.1") or a specifier ("~=2.5.0")'
    try:
        SpecifierSet(value) if value[:1] in "<>=!~" else SpecifierSet(f"=={value}")
    except InvalidSpecifier:
        return f'{shown(value)} is not a version ("2.5.1") or specifier ("~=2.5.0")'
    return None


def _pip_list(value: Any) -> str | None:
    if not isinstance(value, list):
        return "must be a list of PEP 508 requirements"
    return None


def check_pip_item(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a PEP 508 requirement string"
    if CONTROL_RE.search(value) or value.strip().startswith("-"):
        return f"{shown(value)} is not a PEP 508 requirement (pip options are not allowed here)"
    try:
        Requirement(value)
    except InvalidRequirement as exc:
        return f"{shown(value)} is not a PEP 508 requirement: {str(exc).splitlines()[0]}"
    return None


def check_apt_item(value: Any) -> str | None:
    if not isinstance(value, str) or not APT_RE.fullmatch(value):
        return (
            f"{shown(value)} is not a Debian package name "
            "(lowercase letters, digits, '+', '-', '.'; "
            "optionally =VERSION)"
        )
    return None


# Bounds on values that reach the engine: the engine reads them into 64-bit integers and
# answers a larger one with a JSON decoding error; no node has more GPUs or shared memory.
MAX_GPUS = 1024
MAX_SHM_BYTES = 1 << 40  # 1 TiB
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, maximum: int | None = MAX_SHM_BYTES) -> int:
    """``16g`` -> bytes, as Docker reads ``--shm-size`` (binary units: k, m, g, t); the one
    size parser. ValueError when it is not such a size or is above ``maximum``."""
    match = SIZE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{shown(text)} is not a size like 16g (a number, then b, k, m, g or t)")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if maximum is not None and size > maximum:
        raise ValueError(f"{shown(text)} is more than {maximum >> 30}g")
    return size


def _size(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a size like 16g"
    try:
        parse_size(value)
    except ValueError as exc:
        return str(exc)
    return None


def _gpus(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return "must be all, none, a count, or device=0,1"
    if isinstance(value, int):
        return None if 0 <= value <= MAX_GPUS else f"must be 0 to {MAX_GPUS}"
    if not GPUS_RE.fullmatch(value):
        return f"{shown(value)} is not all, none, a count, or device=0,1"
    numbers = [int(n) for n in re.findall(r"\d+", value)]
    if any(n > MAX_GPUS for n in numbers) or len(numbers) > MAX_GPUS:
        return f"{shown(value)}: GPU counts and device numbers go up to {MAX_GPUS}"
    return None


def split_command(value: Any) -> list[str]:
    """``project.command`` as argv: a list of strings as it is, or one string split as a
    POSIX shell splits words (quotes, backslashes; no variables, globs or pipes: nothing
    is run by a shell). ValueError says what is wrong."""
    import shlex

    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into words like a shell would: {exc}") from None
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise ValueError('must be a command line ("python train.py") or a list of strings')
    if not argv or not argv[0]:
        raise ValueError("must name a program to run")
    if len(argv) > MAX_COMMAND_ARGS:
        raise ValueError(f"has more than {MAX_COMMAND_ARGS} arguments")
    for arg in argv:
        if CONTROL_RE.search(arg) or len(arg) > 4096:
            raise ValueError(f"argument {shown(arg)} has a control character or is too long")
    return argv


def _command(value: Any) -> str | None:
    try:
        split_command(value)
    except ValueError as exc:
        return str(exc)
    return None


def _workdir(value: Any) -> str | None:
    if not isinstance(value, str) or not WORKDIR_RE.fullmatch(value) or len(value) > 200:
        return (
            f"{shown(value)} is not an absolute path of plain names "
            "(letters, digits, '.', '_', '-'), e.g. /workspace/project"
        )
    path = value.rstrip("/")
    parts = path.split("/")
    if ".." in parts or "." in parts:
        return f"{shown(value)} must not contain '.' or '..'"
    reserved = next((r for r in RESERVED_DIRS if path == r or path.startswith(r + "/")), None)
    if reserved:
        return f"{shown(value)} is the image's own {reserved}: use /workspace or a new directory"
    # an ancestor of one (/opt, /): the project copied or mounted there (--live) hides it
    hidden = next((r for r in RESERVED_DIRS if r.startswith(path + "/")), None)
    if hidden:
        return (
            f"{shown(value)} holds the image's own {hidden}, which the project would hide "
            "(run --live mounts it there): use /workspace or a new directory"
        )
    return None


def _patterns(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        return "must be a list of .dockerignore patterns"
    if len(value) > MAX_EXCLUDES:
        return f"has more than {MAX_EXCLUDES} patterns"
    bad = next((p for p in value if _text(p, 1000)), None)
    return None if bad is None else f"pattern {shown(bad)} {_text(bad, 1000)}"


@dataclass(frozen=True)
class ByAccelerator:
    """A default that depends on ``hardware.accelerator``."""

    nvidia: Any
    cpu: Any


@dataclass(frozen=True)
class Field:
    """One profile key, declared once: the schema check, the resolver's defaults, the
    generated reference and the error messages all read it.

    ``default`` is the value used when the key is absent or null (``ByAccelerator`` when it
    depends on the accelerator; None when there is none or the resolver derives one, and
    ``default_doc`` then says how). ``type`` is for the reference: str, int, bool, list,
    map, section."""

    path: str
    type: str
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    default_doc: str = ""

    def default_for(self, nvidia: bool) -> Any:
        """The default on an nvidia (or a cpu) profile."""
        if isinstance(self.default, ByAccelerator):
            return self.default.nvidia if nvidia else self.default.cpu
        return self.default

    @property
    def default_text(self) -> str:
        """The default as the reference writes it."""
        if self.default_doc:
            return self.default_doc
        if isinstance(self.default, ByAccelerator):
            return (
                f"{_doc_value(self.default.nvidia)} (nvidia), {_doc_value(self.default.cpu)} (cpu)"
            )
        return _doc_value(self.default)


def _doc_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)) or value == "":
        return json.dumps(value)
    return str(value)


def _int_min(minimum: int, maximum: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if value < minimum:
            return f"must be at least {minimum}"
        return None if maximum is None or value <= maximum else f"must be at most {maximum}"

    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _map(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping of NAME: value"


def _section(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping"


FIELDS: tuple[Field, ...] = (
    Field(
        "name",
        "str",
        None,
        "Profile name; used in image tags and labels.",
        _pattern(NAME_RE, "a name of lowercase letters, digits, '.', '_', '-'"),
        default_doc="file name",
    ),
    Field(
        "description",
        "str",
        "",
        "One line shown by `aibuild profiles` and in the image's labels.",
        _text,
    ),
    Field(
        "extends", "str", None, "Parent profile: a built-in name or a path relative to this file."
    ),
    Field("hardware", "section", None, "The machine the image is for.", _section),
    Field("hardware.accelerator", "str", "cpu", "nvidia or cpu.", choices=("nvidia", "cpu")),
    Field(
        "hardware.gpu",
        "str",
        None,
        "GPU model (A100, H100, L4, RTX 4090, ...); sets the compute capability.",
        lambda v: _text(v, 80),
    ),
    Field("hardware.gpus", "int", ByAccelerator(1, 0), "GPUs per node.", _int_min(0, MAX_GPUS)),
    Field(
        "hardware.driver",
        "str",
        None,
        'The host\'s NVIDIA driver (e.g. "550.54.15"); '
        "checked against the CUDA release's minimum.",
        _pattern(DRIVER_RE, "a driver version like 550.54.15"),
    ),
    Field("software", "section", None, "What goes into the image.", _section),
    Field(
        "software.os",
        "str",
        ByAccelerator("ubuntu22.04", "debian12"),
        "Base OS of the image.",
        choices=OS_CHOICES,
    ),
    Field(
        "software.cuda",
        "str",
        None,
        "CUDA version X.Y (nvidia only).",
        _pattern(MINOR_RE, 'a CUDA version like "12.4"'),
        default_doc="newest that torch, GPU and driver allow",
    ),
    Field(
        "software.cuda_source",
        "str",
        "wheels",
        "Where CUDA comes from (nvidia only). wheels: torch's own CUDA (the nvidia-* wheels) "
        "on a slim OS base, one CUDA stack; image: an nvidia/cuda base, for what needs it "
        "(nvcc, forward-compatibility libraries, CUDA consumers other than torch).",
        choices=("wheels", "image"),
        default_doc="wheels (image when cuda_toolkit)",
    ),
    Field(
        "software.cuda_toolkit",
        "bool",
        False,
        "nvcc in an nvidia/cuda devel builder stage, its CUDA matching torch's, for packages "
        "that compile CUDA code (flash-attn, apex, DeepSpeed ops). Implies cuda_source: image.",
        _bool,
    ),
    Field(
        "software.cudnn",
        "bool",
        True,
        "With cuda_source: image, an nvidia/cuda flavour with cuDNN (torch's wheels bring "
        "their own cuDNN either way).",
        _bool,
    ),
    Field(
        "software.python",
        "str",
        "3.11",
        "Python X.Y; the OS's own python when it matches, else uv-managed.",
        _pattern(MINOR_RE, 'a Python version like "3.11"'),
    ),
    Field(
        "software.torch",
        "str",
        kb.DEFAULT_TORCH,
        'PyTorch version or PEP 440 specifier ("2.5.1", "2.5" = newest 2.5.x, "~=2.5.0", ">=2.7").',
        _torch_spec,
    ),
    Field(
        "software.pip",
        "list",
        [],
        "Extra PEP 508 requirements. Appended to the parent's on extends.",
        _pip_list,
    ),
    Field(
        "software.allow_direct_references",
        "bool",
        "false",
        "Accept `name @ URL` requirements (a file, git+, an archive URL) in software.pip and "
        "the project's requirements. Off: they are refused, since pip builds a source it "
        "fetches that way on the host (`aibuild wheelhouse`), running its setup.py.",
        _bool,
    ),
    Field(
        "software.apt",
        "list",
        [],
        "Extra Debian/Ubuntu packages. Appended to the parent's on extends.",
        lambda v: None if isinstance(v, list) else "must be a list of package names",
    ),
    Field("software.env", "map", {}, "Environment variables set in the image (POSIX names).", _map),
    Field(
        "software.base_image",
        "str",
        None,
        "Explicit base image for both stages (overrides the nvidia/cuda or python image).",
        _pattern(reference.REFERENCE_RE, "an image reference"),
        default_doc="derived",
    ),
    Field(
        "training",
        "section",
        None,
        "Settings of the embedded trainer (see the training reference).",
        _section,
    ),
    Field("run", "section", None, "Defaults for `aibuild run`.", _section),
    Field(
        "run.gpus",
        "str",
        ByAccelerator("all", "none"),
        "GPUs passed to the container: all, none, N, device=0,1.",
        _gpus,
    ),
    Field(
        "run.shm_size",
        "str",
        ByAccelerator("16g", "2g"),
        "Size of /dev/shm (DataLoader workers need it).",
        _size,
    ),
    Field(
        "run.ipc", "str", "private", "IPC namespace: private or host.", choices=("private", "host")
    ),
    Field("image", "section", None, "Where the image is published.", _section),
    Field(
        "project",
        "section",
        None,
        "Your own training code, built into the image's last layers (see Your own code).",
        _section,
    ),
    Field(
        "project.path",
        "str",
        ".",
        "The project's source folder, relative to the profile file that sets it. Its "
        "`.dockerignore` is honoured.",
        lambda v: _text(v, 1000),
        default_doc='"." (the profile\'s folder)',
    ),
    Field(
        "project.exclude",
        "list",
        [],
        "More `.dockerignore` patterns left out of the image (after the defaults "
        "`.git`, `.venv`, `.aibuild`, `aibuild-output`, `.devcontainer`, caches, and the "
        "project's `.dockerignore`; `!PATTERN` takes a file back).",
        _patterns,
    ),
    Field(
        "project.requirements",
        "str",
        None,
        "A requirements.txt, or a pyproject.toml whose `[project].dependencies` are read, "
        "relative to project.path: installed in the requirements layer with software.pip.",
        lambda v: _text(v, 1000),
    ),
    Field(
        "project.command",
        "str or list",
        None,
        "The image's default command: an argv list, or one string split as a shell would "
        '("python train.py --epochs 3"). Without it the embedded trainer runs.',
        _command,
        default_doc=" ".join(contract.TRAIN_ENTRYPOINT),
    ),
    Field(
        "project.workdir",
        "str",
        contract.WORKSPACE,
        "Where the project's files go in the image, and the working directory.",
        _workdir,
    ),
    Field("dev", "section", None, "Opt-in development tools, in an image of their own.", _section),
    Field(
        "dev.jupyter",
        "bool",
        False,
        "Also build `<tag>-dev`: the image plus JupyterLab, for `aibuild jupyter`. The "
        "training image stays without it.",
        _bool,
    ),
    Field(
        "image.name",
        "str",
        "aibuild",
        "Image repository, e.g. registry.example.com/team/train.",
        _pattern(reference.NAME_RE, "an image repository name"),
    ),
    Field(
        "image.tag",
        "str",
        None,
        "Explicit tag instead of the scheme.",
        _pattern(reference.TAG_RE, "a Docker tag"),
        default_doc="<profile>-torch<version>-<cuXYZ|cpu>",
    ),
    Field(
        "image.compression",
        "str",
        "gzip",
        "Layer compression when aibuild pushes: gzip (every engine pulls it) or zstd (faster "
        "to compress and to pull; Docker 23 or newer). `--compression` overrides it.",
        choices=("gzip", "zstd"),
    ),
)

BY_PATH = {f.path: f for f in FIELDS}


def default(path: str, nvidia: bool = False) -> Any:
    """The default of the key at ``path`` (on an nvidia profile when ``nvidia``)."""
    value = BY_PATH[path].default_for(nvidia)
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


def children(prefix: str) -> list[str]:
    """Known child key names of a section ('' for the top level)."""
    depth = prefix.count(".") + 1 if prefix else 0
    out = []
    for f in FIELDS:
        parts = f.path.split(".")
        if len(parts) == depth + 1 and ".".join(parts[:depth]) == prefix:
            out.append(parts[-1])
    return out


# --------------------------------------------------------------------------- the check


class _Located(Protocol):
    """A loaded profile, as the check reads it (``aibuild.profile.load.Profile``)."""

    data: dict[str, Any]

    def diag(self, severity: str, message: str, key: str) -> Diagnostic: ...


def validate_schema(profile: _Located) -> list[Diagnostic]:
    """Unknown keys, types, allowed values, and the format of every string: every problem
    as a diagnostic at its key, none first-fail."""
    diags: list[Diagnostic] = []
    _walk(profile, profile.data, "", diags)
    software = profile.data.get("software")
    if isinstance(software, dict):
        diags += _pip_items(
            profile, software.get("pip"), software.get("allow_direct_references") is True
        )
        diags += _apt_items(profile, software.get("apt"))
        diags += _env_items(profile, software.get("env"))
    training = profile.data.get("training")
    if isinstance(training, dict):
        from aibuild.train.config import validate_training

        for key, message in validate_training(training):
            diags.append(profile.diag("error", message, f"training.{key}" if key else "training"))
    return diags


def _walk(profile: _Located, mapping: dict[str, Any], prefix: str, diags: list[Diagnostic]) -> None:
    """Each key of ``mapping`` against its Field: known, allowed, well formed; sections
    walked in turn (``training:`` is the trainer's, checked by its own schema)."""
    known = children(prefix)
    for key, value in mapping.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in known:
            where = f"in '{prefix}'" if prefix else "at the top level"
            hint = did_you_mean(key, known, listing="known keys")
            diags.append(profile.diag("error", f"unknown key {shown(key)} {where}{hint}", path))
            continue
        field = BY_PATH[path]
        if value is None and field.type != "section" and not field.required:
            continue  # null means "use the default"
        if field.choices and value not in field.choices:
            message = (
                f"{shown(value)} is not allowed; use one of: {', '.join(field.choices)}"
                + did_you_mean(value, field.choices)
            )
            diags.append(profile.diag("error", message, path))
            continue
        problem = field.check(value) if field.check is not None else None
        if problem:
            diags.append(profile.diag("error", f"{key} {problem}", path))
        elif field.type == "section" and path != "training":
            _walk(profile, value, path, diags)


def _pip_items(profile: _Located, items: Any, direct_allowed: bool) -> list[Diagnostic]:
    from aibuild.profile.requirements import direct_reference, runtime_conflict

    diags = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        problem = check_pip_item(item)
        if problem is None and canonicalize_name(Requirement(item).name) in ("torch", "aibuild"):
            problem = f"'{item}' does not belong in software.pip; set software.torch instead"
        elif problem is None:
            problem = runtime_conflict(Requirement(item)) or direct_reference(
                Requirement(item), direct_allowed
            )
        if problem:
            diags.append(profile.diag("error", problem, f"software.pip[{i}]"))
    return diags


def _apt_items(profile: _Located, items: Any) -> list[Diagnostic]:
    return [
        profile.diag("error", problem, f"software.apt[{i}]")
        for i, item in enumerate(items if isinstance(items, list) else [])
        if (problem := check_apt_item(item))
    ]


def _env_items(profile: _Located, env: Any) -> list[Diagnostic]:
    diags = []
    for key, value in (env if isinstance(env, dict) else {}).items():
        path = f"software.env.{key}"
        if not ENV_KEY_RE.fullmatch(key):
            problem = (
                f"{shown(key)} is not a POSIX environment variable name "
                "(letters, digits, '_'; not starting with a digit)"
            )
        elif isinstance(value, (dict, list)) or value is None:
            problem = f"{key} must be a string, number or boolean"
        elif CONTROL_RE.search(str(value)):
            problem = f"{key} must not contain newlines or control characters"
        else:
            continue
        diags.append(profile.diag("error", problem, path))
    return diags


# --------------------------------------------------------------------------- the reference


def reference_markdown() -> str:
    """The profile reference table for the README."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in FIELDS:
        if f.type == "section":
            continue
        meaning = f.doc + (f" One of: {', '.join(f.choices)}." if f.choices else "")
        lines.append(f"| `{f.path}` | {f.type} | {f.default_text} | {meaning} |")
        if f.path == "software.base_image":
            lines.extend(_training_rows())
    return "\n".join(lines)


def _training_rows() -> list[str]:
    from aibuild.train.config import TRAINING_FIELDS

    rows = []
    for spec in TRAINING_FIELDS:
        default = "null" if spec.default is None else spec.default
        meaning = spec.doc.replace("|", "/") + "."
        if spec.choices:
            meaning += f" One of: {', '.join(spec.choices)}."
        kind = spec.type.replace(" | None", ", optional").replace("|", "or")
        rows.append(f"| `training.{spec.name}` | {kind} | {default} | {meaning} |")
    return rows


if __name__ == "__main__":  # pragma: no cover
    print(reference_markdown())
