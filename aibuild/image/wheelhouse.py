"""Wheelhouse: every wheel a profile's image installs, downloaded for the image's platform.

``aibuild wheelhouse PROFILE -o DIR`` runs ``pip download`` for the image's target
(``manylinux_2_28_x86_64``, the plan's CPython X.Y), with the plan's torch wheel index
first and PyPI as an extra index. The directory can then be given to
``aibuild image --wheelhouse DIR`` on a machine without network access.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import subprocess
import sys
import threading
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aibuild.errors import BuildError
from aibuild.image.render import UV_REQUIREMENT
from aibuild.logs import Log, silent
from aibuild.profile.resolve import dev_requirements, image_requirements

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aibuild.profile.plan import BuildPlan

# The image's platform: glibc 2.28 or newer on x86_64. pip matches each --platform tag
# exactly (it does not expand manylinux_2_28 to the older tags such a system runs), so
# every one is named: torch's wheels carry 2_28, NCCL's 2_18, uv's 2_17, others 2014.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
PYPI = "https://pypi.org/simple"


def requirements(plan: BuildPlan, torch_index: bool = True) -> list[str]:
    """Everything the image installs with pip: torch, then ``image_requirements`` (the
    profile's and its project's packages and the aibuild runtime's, exactly as rendered),
    then the dev image's (``dev.jupyter``)."""
    # PyPI's own build (torch_index_url None) has no local version label: `===` asks for
    # exactly that version, so a `+cpu` wheel in a find-links directory (whose label would
    # satisfy `==`, and sort higher) can never stand in for the CUDA build.
    pin = "===" if plan.torch_index_url is None and plan.accelerator == "nvidia" else "=="
    torch = f"torch{pin}{plan.torch}"
    if plan.torch_index_url and not torch_index:
        # PyTorch's index is left out: only a wheel of the plan's variant (a find-links
        # folder's torch-X+cpu) may stand in, never PyPI's build of another variant
        torch = f"torch=={plan.torch}+{plan.torch_variant}"
    return [
        torch,
        *image_requirements(plan),
        *dev_requirements(plan),
        UV_REQUIREMENT,
    ]


def pip_download_command(
    plan: BuildPlan,
    dest: Path,
    *,
    python: str = sys.executable,
    platforms: Sequence[str] = PLATFORMS,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
    torch_index: bool = True,
) -> list[str]:
    """The ``pip download`` command line for ``plan``'s image (pure); without
    ``torch_index`` PyTorch's index is left out (it does not answer)."""
    abi = "cp" + plan.python.replace(".", "")
    command = [
        python,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        *(f for p in platforms for f in ("--platform", p)),
        "--python-version",
        plan.python,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "-d",
        str(dest),
        "--index-url",
        (plan.torch_index_url if torch_index else None) or PYPI,
    ]
    if plan.torch_index_url and torch_index:
        command += ["--extra-index-url", PYPI]
    for url in extra_index_urls:
        command += ["--extra-index-url", url]
    for link in find_links:
        command += ["--find-links", link]
    return command + requirements(plan, torch_index)


@dataclass(frozen=True)
class WheelhouseResult:
    directory: Path
    wheels: list[str]
    command: list[str]


def download_wheelhouse(
    plan: BuildPlan,
    dest: Path,
    *,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
    echo: bool = True,
    log: Log = silent,
) -> WheelhouseResult:
    """Download ``plan``'s wheels into ``dest``; BuildError with pip's last lines on failure.

    Wheels only, and nothing built on this host: a direct reference (``name @ URL``) is
    refused before pip runs (pip builds such a source, running its setup.py, whatever
    ``--only-binary`` says), and afterwards every requirement must have its wheel in
    ``dest``. A torch index that does not answer is found by one probe, not by pip's
    retries for every package. pip's lines (with ``echo``) and warnings go to ``log``."""
    dest = Path(dest)
    refuse_direct_references(plan)
    torch_index = True
    if plan.torch_index_url:
        problem = probe_index(plan.torch_index_url)
        if problem:  # asked once: pip would retry it for every package (15 minutes)
            torch_index = False
            log(
                f"aibuild: warning: {problem}; leaving it out: torch {plan.torch}+"
                f"{plan.torch_variant} must come from --find-links DIR or pip's own "
                "find-links, the rest from PyPI"
            )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"-o {dest}: cannot make that folder: {exc.strerror or exc}") from None
    command = pip_download_command(
        plan,
        dest,
        extra_index_urls=extra_index_urls,
        find_links=find_links,
        torch_index=torch_index,
    )
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            if echo:
                log(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        raise download_failed(plan, command, code, list(tail))
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    check_wheels(plan, dest)
    return WheelhouseResult(dest, wheels, command)


def refuse_direct_references(plan: BuildPlan) -> None:
    """A BuildError for a direct reference (``name @ URL``): pip would build that source
    here, running its setup.py, whatever ``--only-binary`` says."""
    for item in requirements(plan):
        req = Requirement(item)
        if req.url is not None:
            raise BuildError(
                f"'{req.name} @ ...' is a direct reference: aibuild wheelhouse downloads "
                "wheels from indexes only (pip would build it here); put its wheel in a "
                "folder and give --find-links DIR"
            )


def download_failed(plan: BuildPlan, command: list[str], code: int, tail: list[str]) -> BuildError:
    """The BuildError for a failed ``pip download``: its last lines, and a hint when they
    say no wheel matched or an index could not be reached."""
    text = "\n".join(tail)
    hint = ""
    if "Could not find a version" in text or "No matching distribution" in text:
        hint = (
            f" (no wheel for CPython {plan.python} on {PLATFORMS[0]} in "
            f"{plan.torch_index_url or PYPI} or {PYPI}: is the index reachable from here? "
            "Add --find-links DIR holding "
            "the wheels, or --extra-index-url a mirror)"
        )
    elif any(m in text for m in ("NewConnectionError", "ConnectTimeout", "ProxyError")):
        hint = (
            f" (an index could not be reached: {plan.torch_index_url or PYPI} / {PYPI}; set "
            "HTTPS_PROXY, or use --find-links / --extra-index-url to a reachable mirror)"
        )
    return BuildError(
        f"pip download failed with exit code {code}{hint}",
        step=" ".join(command[1:5]) + " ... " + " ".join(requirements(plan)),
        log_tail=tail,
    )


PROBE_TIMEOUT_S = 15.0


def probe_index(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """One request to the torch index (its ``torch/`` page, as pip asks): why it does not
    answer, or None when it does."""
    import urllib.error
    import urllib.request

    page = url.rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(page, timeout=timeout) as response:
            response.read(1)
    except urllib.error.HTTPError:
        return None  # it answers: pip reads what it says
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"PyTorch's wheel index {url} does not answer from here ({reason})"
    return None


def check_wheels(plan: BuildPlan, dest: Path) -> None:
    """Every requirement has a wheel in ``dest`` (pip reports success for a requirement
    it satisfied otherwise); BuildError naming the missing ones."""
    have = {canonicalize_name(p.name.split("-", 1)[0]) for p in dest.glob("*.whl")}
    target = {
        "python_version": plan.python,
        "python_full_version": f"{plan.python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    wanted = [Requirement(r) for r in requirements(plan)]
    missing = sorted(
        req.name
        for req in wanted
        if (req.marker is None or req.marker.evaluate(target))
        and canonicalize_name(req.name) not in have
    )
    if missing:
        raise BuildError(
            f"the wheelhouse {dest} has no wheel for {', '.join(missing[:10])}: pip did not "
            "download one; give --find-links DIR holding it"
        )


# ---------------------------------------------------------------------------
# Serving a wheelhouse to a build, instead of copying it into the context
# ---------------------------------------------------------------------------
# A copied wheelhouse is sent with every build context (3 GB for a CUDA torch) and written
# into a builder layer. Served over loopback HTTP, the build's RUN steps (on the host's
# network) read only the wheels they install, and the image can be a single stage.


def wheelhouse_port(directory: Path) -> int:
    """A port fixed for this wheelhouse's path: the URL lands in RUN instructions, so it
    must be the same from build to build for the layer cache to hit."""
    return 20000 + zlib.crc32(str(directory.resolve()).encode()) % 20000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wheelhouse(directory: Path) -> Iterator[str]:
    """Serve ``directory`` read-only on 127.0.0.1 at its fixed port for the duration; yields
    the URL (``http://127.0.0.1:PORT/``) that pip and uv take as ``--find-links``. Other
    aibuild builds serving the same wheelhouse share the port (SO_REUSEPORT). OSError when
    something else holds the port."""
    handler = functools.partial(_QuietHandler, directory=str(directory.resolve()))

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    port = wheelhouse_port(directory)
    server = Server(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="aibuild-wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()
