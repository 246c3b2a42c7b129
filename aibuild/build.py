"""Build: a rendered build context -> an image, with progress, a build record and clear failures.

The pipeline, one function each:

- ``detect_base``: what a custom base image really is (distro, python3), learnt by
  running a throwaway container from it; fed to resolution as ``RenderOptions``.
- ``context_tar``: the context directory as a deterministic tar (sorted entries,
  mtime 0, uid/gid 0, no owner names, normalised modes) so the engine's layer
  cache hits across re-renders.
- ``build_context``: sends it through docker-py's low-level build API and turns the
  JSON chunk stream into ``BuildEvent``s (``BuildProgress``); a chunk carrying
  ``error``/``errorDetail`` always becomes a ``BuildError`` with the failing step and
  its log tail (docker-py does not raise on them).
- ``inspect_image``: the exact Python and OS packages found in the built image.
- ``build_image``: the whole ``aibuild image`` command as one library call; it
  returns a ``BuildResult`` and writes the build record under ``.aibuild/builds/``.

Reporters (plain lines, a live TTY line, nothing) show the events to people.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TextIO

from aibuild.engine import (
    api_message,
    client_session,
    engine_errors,
    is_connection_error,
    unreachable,
)
from aibuild.errors import BuildError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

    from aibuild.plan import BuildPlan, RenderOptions

RECORD_DIR = Path(".aibuild") / "builds"
LOG_TAIL_LINES = 20
VENV_PYTHON = "/opt/venv/bin/python"

# Docker's predefined proxy build args: usable by RUN steps, never kept in the image
# (not in `docker history`, not in ENV) unless a Dockerfile declares them.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_PACKAGE_INSTALL_RE = re.compile(
    r"\b(pip3?|uv pip|python3? -m pip)\b.*\binstall\b|\bapt-get\b.*\binstall\b|\bapt\b.*\binstall\b"
)


# ---------------------------------------------------------------------------
# Build arguments
# ---------------------------------------------------------------------------


def proxy_build_args(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Proxy settings from the environment as Docker's predefined proxy build args.

    Both spellings are read; each value is passed under both spellings (curl reads
    only lower case, most tools either), the upper-case variable winning a conflict.
    """
    env = os.environ if environ is None else environ
    args: dict[str, str] = {}
    for upper in PROXY_VARIABLES:
        value = env.get(upper) or env.get(upper.lower())
        if value:
            args[upper] = value
            args[upper.lower()] = value
    return args


def parse_build_args(values: Iterable[str]) -> dict[str, str]:
    """``K=V`` strings -> a dict; ValueError names the bad one."""
    args: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"expected KEY=VALUE with KEY a variable name, got {item!r}")
        args[key] = value
    return args


# ---------------------------------------------------------------------------
# Deterministic build context
# ---------------------------------------------------------------------------


def _read_dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(root: Path) -> list[str]:
    """The context's paths (relative, POSIX, sorted) after applying its .dockerignore."""
    patterns = _read_dockerignore(root)
    if patterns:
        from docker.utils.build import exclude_paths

        kept = {p.replace(os.sep, "/") for p in exclude_paths(str(root), patterns, "Dockerfile")}
    else:
        kept = set()
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            for name in dirnames + filenames:
                kept.add((rel / name).as_posix())
    return sorted(kept)


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir():
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    else:
        info.mode = 0o777 if info.issym() else 0o644
    info.pax_headers = {}
    return info


def context_tar(root: Path, *, gzip: bool = False) -> IO[bytes]:
    """The build context as a deterministic tar (optionally gzip with a fixed header).

    Entries are sorted; every mtime is 0, owners are 0:0 with no names, modes are
    0755 (directories, executables) or 0644: the same tree always gives the same
    bytes, so the engine's cache keys (which hash file contents and metadata) hit.
    The tar is spooled to a temporary file: contexts may hold a GB-sized wheelhouse.
    """
    root = Path(root)
    if not (root / "Dockerfile").is_file():
        raise BuildError(f"no Dockerfile in the build context {root}")
    out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
    raw: IO[bytes] = (
        gzip_module.GzipFile(fileobj=out, mode="wb", mtime=0, filename="")  # type: ignore[assignment]
        if gzip
        else out
    )
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in context_files(root):
            path = root / rel
            info = _normalised(tar.gettarinfo(str(path), arcname=rel))
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    if gzip:
        raw.close()
    out.seek(0)
    return out


# ---------------------------------------------------------------------------
# Progress: the classic builder's JSON stream -> events
# ---------------------------------------------------------------------------


@dataclass
class BuildStep:
    """One Dockerfile instruction as the engine ran it."""

    index: int
    total: int
    instruction: str
    cached: bool = False
    duration: float = 0.0
    output_lines: int = 0

    @property
    def installs_packages(self) -> bool:
        """Whether this step installs packages (pip, uv pip, apt-get)."""
        return self.instruction.startswith("RUN") and bool(
            _PACKAGE_INSTALL_RE.search(self.instruction)
        )


@dataclass(frozen=True)
class BuildEvent:
    """Something a reporter may show.

    kind: "step" (a step started), "cached" (it hit the cache), "output" (a line it
    printed), "step-done" (it finished; ``duration``), "status" (engine status such
    as a base image pull), "done" (the image id in ``text``).
    """

    kind: str
    step: BuildStep | None = None
    text: str = ""
    duration: float = 0.0


class BuildProgress:
    """Parses the classic builder's decoded chunks into events, keeping what a failure needs.

    Pure: feed it dicts, read events back. The engine splits output anywhere, so
    ``stream`` text is re-assembled into whole lines before it is interpreted.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._partial = ""
        self._started = 0.0
        self.steps: list[BuildStep] = []
        self.image_id: str | None = None
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    @property
    def current(self) -> BuildStep | None:
        return self.steps[-1] if self.steps else None

    def feed(self, chunk: Any) -> list[BuildEvent]:
        """Events for one decoded chunk; raises BuildError for an error chunk."""
        if not isinstance(chunk, Mapping):
            return []
        if "error" in chunk or "errorDetail" in chunk:
            self._raise(chunk)
        events: list[BuildEvent] = []
        aux = chunk.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
            self.image_id = aux["ID"]
        if "stream" in chunk:
            self._partial += str(chunk["stream"])
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                events.extend(self._line(line.rstrip("\r")))
        elif "status" in chunk:
            status = str(chunk["status"])
            if chunk.get("id"):
                status = f"{chunk['id']}: {status}"
            if chunk.get("progress"):
                status = f"{status} {chunk['progress']}"
            events.append(BuildEvent("status", self.current, status))
        return events

    def finish(self) -> list[BuildEvent]:
        """Events at the end of the stream (the last step's end, the image id)."""
        events: list[BuildEvent] = []
        if self._partial.strip():
            events.extend(self._line(self._partial))
        self._partial = ""
        events.extend(self._end_step())
        if self.image_id is None:
            raise BuildError(
                "the build ended without producing an image (the engine closed the stream)",
                step=self.current.instruction if self.current else "",
                log_tail=list(self.tail),
            )
        events.append(BuildEvent("done", None, self.image_id))
        return events

    def _line(self, line: str) -> list[BuildEvent]:
        match = _STEP_RE.match(line)
        if match:
            events = self._end_step()
            new = BuildStep(int(match[1]), int(match[2]), match[3].strip())
            self.steps.append(new)
            self._started = self._clock()
            self.tail.clear()
            events.append(BuildEvent("step", new, new.instruction))
            return events
        step = self.current
        stripped = line.strip()
        if stripped == "---> Using cache":
            if step is not None:
                step.cached = True
            return [BuildEvent("cached", step)]
        if (
            stripped.startswith("---> ")
            or stripped.startswith("Removing intermediate container")
            or not stripped
        ):
            return []  # engine bookkeeping: layer ids, "Running in", cleanup
        if stripped.startswith("Successfully built "):
            if self.image_id is None:
                self.image_id = stripped.split()[-1]
            return self._end_step()
        if stripped.startswith("Successfully tagged "):
            return []
        self.tail.append(line)
        if step is not None:
            step.output_lines += 1
        return [BuildEvent("output", step, line)]

    def _end_step(self) -> list[BuildEvent]:
        step = self.current
        if step is None or self._started == 0.0:
            return []
        step.duration = round(self._clock() - self._started, 3)
        self._started = 0.0
        return [BuildEvent("step-done", step, duration=step.duration)]

    def _raise(self, chunk: Mapping[str, Any]) -> None:
        detail = chunk.get("errorDetail")
        message = chunk.get("error") or (
            detail.get("message") if isinstance(detail, Mapping) else None
        )
        if self._partial.strip():
            self.tail.append(self._partial.rstrip())
            self._partial = ""
        step = self.current
        where = f"step {step.index}/{step.total}" if step else "the build"
        raise BuildError(
            f"{where} failed: {str(message or 'unknown error').strip()}",
            step=step.instruction if step else "",
            log_tail=list(self.tail),
        )


# ---------------------------------------------------------------------------
# Reporters
# ---------------------------------------------------------------------------


class Reporter(Protocol):
    def event(self, event: BuildEvent) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


def _step_label(step: BuildStep) -> str:
    return f"Step {step.index}/{step.total}"


class QuietReporter:
    """Shows nothing (``--quiet``; ``--json`` without a terminal)."""

    def event(self, event: BuildEvent) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainReporter:
    """Plain lines for pipes and CI logs: each step, its output, whether cached, its time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def event(self, event: BuildEvent) -> None:
        step = event.step
        if event.kind == "step" and step is not None:
            self._print(f"{_step_label(step)} : {step.instruction}")
        elif event.kind == "cached":
            self._print(" ---> Using cache")
        elif event.kind == "output":
            self._print(f"  {event.text}")
        elif event.kind == "status" and not event.text.endswith("]"):
            self._print(f"  {event.text}")  # pull status lines, not their progress bars
        elif event.kind == "step-done" and step is not None and not step.cached:
            self._print(f" ---> done in {event.duration:.1f}s")

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        pass


class LiveReporter:
    """A live display for terminals: a line per finished step, a status line for the current."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._status = ""
        self._last_draw = 0.0

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def _draw(self, text: str) -> None:
        self.stream.write("\r\033[K" + text[: self._width()])
        self.stream.flush()
        self._status = text

    def _commit(self, text: str) -> None:
        self.stream.write("\r\033[K" + text[: self._width()] + "\n")
        self.stream.flush()
        self._status = ""

    def event(self, event: BuildEvent) -> None:
        step = event.step
        if step is None:
            if event.kind == "status":
                self._draw(f"  {event.text}")
            return
        label = f"[{step.index}/{step.total}] {step.instruction}"
        if event.kind == "step":
            self._draw(label)
        elif event.kind in ("output", "status"):
            now = time.monotonic()
            if now - self._last_draw > 0.1:  # at most ten redraws a second
                self._last_draw = now
                self._draw(f"{label[:60]}  │ {event.text.strip()}")
        elif event.kind == "cached":
            self._draw(f"{label}  (cached)")
        elif event.kind == "step-done":
            how = "cached" if step.cached else f"{event.duration:6.1f}s"
            width = self._width()
            room = max(10, width - 10)
            self._commit(f"{label[:room]:<{room}} {how:>8}")

    def message(self, text: str) -> None:
        if self._status:
            self._commit(self._status)
        self._commit(text)

    def close(self) -> None:
        if self._status:
            self._commit(self._status)


def reporter_for(stream: TextIO, *, quiet: bool = False) -> Reporter:
    """The reporter that suits ``stream``: nothing, a live display on a TTY, else plain lines."""
    if quiet:
        return QuietReporter()
    if stream.isatty() and os.environ.get("TERM", "") != "dumb":
        return LiveReporter(stream)
    return PlainReporter(stream)


# ---------------------------------------------------------------------------
# Building a context
# ---------------------------------------------------------------------------


@dataclass
class BuildOutcome:
    """What the engine produced for one context."""

    image_id: str
    tags: list[str]
    steps: list[BuildStep]
    duration: float

    @property
    def cache_hits(self) -> int:
        return sum(1 for step in self.steps if step.cached)


def _split_ref(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a registry port is not a tag."""
    name = ref.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def _is_remote(client: docker.DockerClient) -> bool:
    base_url = str(getattr(client.api, "base_url", ""))
    return not (base_url.startswith("http+unix") or base_url.startswith("http+docker"))


def build_context(
    client: docker.DockerClient,
    context_dir: Path,
    *,
    tags: Sequence[str] = (),
    nocache: bool = False,
    pull: bool = False,
    buildargs: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    reporter: Reporter | None = None,
) -> BuildOutcome:
    """Build ``context_dir`` (with its Dockerfile) and tag the image with every tag.

    Raises BuildError for a failing step (with its instruction and output tail) and
    EngineError when the engine cannot be reached or refuses the request.
    """
    report = reporter or QuietReporter()
    progress = BuildProgress()
    started = time.monotonic()
    args = {**proxy_build_args(), **(buildargs or {})}
    gzip = _is_remote(client)
    with context_tar(Path(context_dir), gzip=gzip) as tar, engine_errors("the build"):
        stream = client.api.build(
            fileobj=tar,
            custom_context=True,
            encoding="gzip" if gzip else None,
            tag=tags[0] if tags else None,
            nocache=nocache,
            pull=pull,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=args,
            network_mode=network_mode,
        )
        try:
            for chunk in stream:
                for event in progress.feed(chunk):
                    report.event(event)
        except BuildError:
            report.close()
            raise
        except Exception as exc:
            report.close()
            if is_connection_error(exc):
                raise unreachable(None, exc) from None
            raise
        for event in progress.finish():
            report.event(event)
        image_id = progress.image_id
        assert image_id is not None  # finish() raised otherwise
        if not image_id.startswith("sha256:"):
            image_id = client.images.get(image_id).id
        for tag in tags[1:]:
            repo, name = _split_ref(tag)
            client.api.tag(image_id, repo, name, force=True)
    report.close()
    return BuildOutcome(
        image_id=image_id,
        tags=list(tags),
        steps=progress.steps,
        duration=round(time.monotonic() - started, 3),
    )


# ---------------------------------------------------------------------------
# Throwaway containers: base detection, package inspection
# ---------------------------------------------------------------------------


def run_script(
    client: docker.DockerClient, image: str, script: str, *, user: str | None = None
) -> tuple[int, str]:
    """Run ``/bin/sh -c script`` in a throwaway container; (exit code, stdout+stderr).

    The container is removed on every path.
    """
    with engine_errors(f"running a helper container from {image}"):
        container = client.containers.create(
            image,
            entrypoint=["/bin/sh", "-c"],
            command=[script],
            user=user,
            network_disabled=True,
            labels={"ai.aibuild.helper": "1"},
        )
        try:
            container.start()
            status = container.wait()
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        finally:
            container.remove(force=True)
    return int(status.get("StatusCode", 1)), output


@dataclass(frozen=True)
class BaseFacts:
    """What a base image is: its distro as aibuild names it, its python3, its identity."""

    image: str
    image_id: str
    digest: str | None
    os: str | None  # "debian12", "ubuntu22.04", or None when unknown
    python: str | None  # "3.11", or None when it has no python3


_PY_PROBE = "import sys; print('PYTHON=%d.%d' % sys.version_info[:2])"
_BASE_SCRIPT = f'cat /etc/os-release 2>/dev/null; python3 -c "{_PY_PROBE}" 2>/dev/null; true'


def parse_os_release(text: str) -> str | None:
    """``/etc/os-release`` -> "debian12" / "ubuntu22.04" (None when neither)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    distro = fields.get("ID", "")
    version = fields.get("VERSION_ID", "")
    if distro == "debian" and version:
        return f"debian{version.split('.')[0]}"
    if distro == "ubuntu" and version:
        return f"ubuntu{version}"
    return None


def ensure_image(client: docker.DockerClient, image: str, *, pull: bool = False) -> Any:
    """The local image ``image``, pulled when asked or when absent."""
    import docker

    with engine_errors(f"looking up {image}"):
        if not pull:
            try:
                return client.images.get(image)
            except docker.errors.ImageNotFound:
                pass
        repo, tag = _split_ref(image)
        try:
            return client.images.pull(repo, tag=tag)
        except docker.errors.APIError as exc:
            raise BuildError(
                f"base image {image} is not on this engine and cannot be pulled: {api_message(exc)}"
            ) from None


def detect_base(client: docker.DockerClient, image: str, *, pull: bool = False) -> BaseFacts:
    """Run a throwaway container from ``image`` to learn its distro and python3."""
    found = ensure_image(client, image, pull=pull)
    _, output = run_script(client, found.id, _BASE_SCRIPT)
    python = None
    for line in output.splitlines():
        if line.startswith("PYTHON="):
            python = line.split("=", 1)[1].strip()
    digests = found.attrs.get("RepoDigests") or []
    return BaseFacts(
        image=image,
        image_id=found.id,
        digest=digests[0] if digests else None,
        os=parse_os_release(output),
        python=python,
    )


_INSPECT_SCRIPT = (
    f"echo '## python'; "
    f"if [ -x {VENV_PYTHON} ]; then PY={VENV_PYTHON}; else PY=python3; fi; "
    '"$PY" -m pip freeze --all 2>/dev/null || "$PY" -c '
    "\"import importlib.metadata as m; print(chr(10).join(sorted('%s==%s' % "
    "(d.metadata['Name'], d.version) for d in m.distributions())))\" 2>/dev/null; "
    "echo '## os'; dpkg-query -W -f '${Package}=${Version}\\n' 2>/dev/null; true"
)


def parse_inspection(output: str) -> tuple[list[str], list[str]]:
    """The inspection script's output -> (python packages, OS packages), each sorted."""
    python: list[str] = []
    system: list[str] = []
    target: list[str] | None = None
    for line in output.splitlines():
        line = line.strip()
        if line == "## python":
            target = python
        elif line == "## os":
            target = system
        elif line and target is not None:
            target.append(line)
    return sorted(set(python), key=str.lower), sorted(set(system))


def inspect_image(client: docker.DockerClient, image: str) -> tuple[list[str], list[str]]:
    """Exact Python packages (``pip freeze`` by the venv's python) and OS packages
    (``dpkg-query -W``) found in ``image``."""
    _, output = run_script(client, image, _INSPECT_SCRIPT)
    return parse_inspection(output)


# ---------------------------------------------------------------------------
# aibuild image: plan -> context -> image -> record
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    """How to build, apart from the profile and the render options."""

    tags: tuple[str, ...] = ()
    nocache: bool = False
    pull: bool = False
    build_args: tuple[tuple[str, str], ...] = ()
    network_mode: str | None = None
    context_dir: str | None = None  # keep the rendered context here (default: a temp dir)
    record_dir: str = str(RECORD_DIR)


@dataclass
class BuildResult:
    """What ``aibuild image`` produced."""

    image_id: str
    tags: list[str]
    plan: BuildPlan
    record_path: Path
    steps: list[BuildStep]
    duration: float
    base: BaseFacts | None = None
    python_packages: list[str] = field(default_factory=list)
    os_packages: list[str] = field(default_factory=list)

    @property
    def cache_hits(self) -> int:
        return sum(1 for step in self.steps if step.cached)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "tags": self.tags,
            "image_ref": self.plan.image_ref,
            "record": str(self.record_path),
            "duration_s": self.duration,
            "steps": [asdict(step) for step in self.steps],
            "cache_hits": self.cache_hits,
            "profile": self.plan.profile_name,
            "profile_hash": self.plan.profile_hash,
        }


def _explicit_base(ref: str, overrides: Sequence[str]) -> str | None:
    """``software.base_image`` as the profile states it (None when the profile leaves it)."""
    from aibuild.profile import load_profile

    profile: Any = load_profile(ref, overrides)
    software: Any = getattr(profile, "software", None)
    if software is None:
        data = getattr(profile, "data", profile)
        software = data.get("software") if isinstance(data, Mapping) else None
    value = (
        software.get("base_image")
        if isinstance(software, Mapping)
        else getattr(software, "base_image", None)
    )
    return value if isinstance(value, str) and value else None


def resolve_for_build(
    client: docker.DockerClient,
    ref: str,
    overrides: Sequence[str],
    options: RenderOptions,
    *,
    pull: bool = False,
) -> tuple[BuildPlan, RenderOptions, BaseFacts | None]:
    """The plan to build, with a custom base image's real distro and python learnt first."""
    from aibuild.resolve import plan_for

    base = options.base_image or _explicit_base(ref, overrides)
    facts: BaseFacts | None = None
    if base:
        facts = detect_base(client, base, pull=pull)
        options = replace(options, base_image=base, base_os=facts.os, base_python=facts.python)
    plan = plan_for(ref, overrides, options)
    return plan, options, facts


def _base_identity(client: docker.DockerClient, image: str) -> dict[str, Any]:
    import docker

    try:
        found = client.images.get(image)
    except docker.errors.DockerException:
        return {"ref": image, "id": None, "digest": None}
    digests = found.attrs.get("RepoDigests") or []
    return {"ref": image, "id": found.id, "digest": digests[0] if digests else None}


def write_record(result: BuildResult, extra: Mapping[str, Any], record_dir: Path) -> Path:
    """Write the build record JSON; also ``latest.json`` beside it. Returns its path."""
    record_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    short = result.image_id.removeprefix("sha256:")[:12]
    path = record_dir / f"{result.plan.profile_name}-{stamp}-{short}.json"
    record = {
        "aibuild_record": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image_id": result.image_id,
        "tags": result.tags,
        "image_ref": result.plan.image_ref,
        "plan": result.plan.to_dict(),
        **extra,
        "python_packages": result.python_packages,
        "os_packages": result.os_packages,
        "duration_s": result.duration,
        "cache_hits": result.cache_hits,
        "steps": [
            {**asdict(step), "installs_packages": step.installs_packages} for step in result.steps
        ],
    }
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    path.write_text(text, encoding="utf-8")
    (record_dir / "latest.json").write_text(text, encoding="utf-8")
    result.record_path = path
    return path


def build_image(
    ref: str,
    overrides: Sequence[str] = (),
    options: RenderOptions | None = None,
    settings: BuildSettings | None = None,
    reporter: Reporter | None = None,
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Render ``ref``'s build context, build it, tag it, inspect it, record it.

    Tags: the plan's ``image_ref`` plus ``settings.tags``. The record goes to
    ``settings.record_dir`` (``.aibuild/builds/`` under the current directory).
    """
    from aibuild.plan import RenderOptions

    options = options or RenderOptions()
    settings = settings or BuildSettings()
    report = reporter or QuietReporter()
    with client_session(client) as engine:
        return _build_image(engine, ref, overrides, options, settings, report)


def _build_image(
    client: docker.DockerClient,
    ref: str,
    overrides: Sequence[str],
    options: RenderOptions,
    settings: BuildSettings,
    report: Reporter,
) -> BuildResult:
    from aibuild.render import write_context

    plan, options, facts = resolve_for_build(client, ref, overrides, options, pull=settings.pull)
    if facts is not None:
        report.message(
            f"base image {facts.image}: {facts.os or 'unknown distro'}, "
            f"python3 {facts.python or 'absent'}"
        )
    tags = [plan.image_ref, *[t for t in settings.tags if t != plan.image_ref]]
    with tempfile.TemporaryDirectory(prefix="aibuild-context-") as tmp:
        if settings.context_dir:
            context = Path(settings.context_dir)
            if context.exists():
                shutil.rmtree(context)
        else:
            context = Path(tmp) / "context"
        context.mkdir(parents=True)
        write_context(plan, context, options)
        outcome = build_context(
            client,
            context,
            tags=tags,
            nocache=settings.nocache,
            pull=settings.pull,
            buildargs=dict(settings.build_args),
            network_mode=settings.network_mode,
            reporter=report,
        )
    python_packages, os_packages = inspect_image(client, outcome.image_id)
    result = BuildResult(
        image_id=outcome.image_id,
        tags=outcome.tags,
        plan=plan,
        record_path=Path(),
        steps=outcome.steps,
        duration=outcome.duration,
        base=facts,
        python_packages=python_packages,
        os_packages=os_packages,
    )
    extra = {
        "base_image": _base_identity(client, plan.base_image),
        "runtime_image": _base_identity(client, plan.runtime_image),
        "render_options": {
            k: v for k, v in asdict(options).items() if k not in ("constraints",) or v
        },
        "build_args": sorted(dict(settings.build_args)),  # names only: values may be secrets
    }
    write_record(result, extra, Path(settings.record_dir))
    return result


def latest_record(record_dir: Path = RECORD_DIR) -> dict[str, Any] | None:
    """The most recent build record under ``record_dir`` (None when there is none)."""
    path = record_dir / "latest.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def iter_package_steps(steps: Iterable[BuildStep]) -> Iterator[BuildStep]:
    """The steps that install packages (pip/uv/apt)."""
    return (step for step in steps if step.installs_packages)


__all__ = [
    "BaseFacts",
    "BuildEvent",
    "BuildOutcome",
    "BuildProgress",
    "BuildResult",
    "BuildSettings",
    "BuildStep",
    "LiveReporter",
    "PlainReporter",
    "QuietReporter",
    "Reporter",
    "build_context",
    "build_image",
    "context_tar",
    "detect_base",
    "inspect_image",
    "latest_record",
    "parse_build_args",
    "parse_os_release",
    "proxy_build_args",
    "reporter_for",
]
