"""Fixtures for the real-engine tier: a Docker engine, base image, wheelhouse,
registries and the fake NVIDIA hook, as prepared by ``make engine``
(scripts/test-env.sh).

Values come from the environment, falling back to ``.aibuild-test-env`` at the
repository root (``make test`` sources it; a bare ``pytest`` reads it here). A
missing value or an engine that does not answer FAILS the test with the command
to run: never a skip, since a skipped integration test hides a broken setup.

Fixtures:
  test_env              all AIBUILD_TEST_* values (TestEnv)
  docker_host           DOCKER_HOST of the main engine (fake NVIDIA hook on its PATH)
  docker_client         docker.DockerClient for it (session)
  nohook_docker_host    a second engine without the NVIDIA runtime: --gpus fails there
  nohook_docker_client  docker.DockerClient for it (session)
  engine_hosts          {name: DOCKER_HOST} of Docker 20.10, 26 classic, 26 containerd
  base_image            offline Debian bookworm minbase image (no python3)
  build_network         network_mode for builds and containers that need the
                        network ("bridge" here; "host" where NAT does not work)
  wheelhouse            Path: torch 2.13.0+cpu and its wheels, click, pyyaml, packaging
  dev_wheelhouse        Path: the same plus JupyterLab and its wheels (dev.jupyter images)
  devcontainer_cli      Path of the Dev Containers CLI (@devcontainers/cli from npm)
  ca_cert               Path: the CA bundle a build needs to reach PyPI via the proxy
  registry              Registry at 127.0.0.1:5000, no auth
  auth_registry         Registry at 127.0.0.1:5001, htpasswd auth (.username/.password)
  registry_control      start/stop/restart/status a registry by name; shared
                        registries it stopped are restarted at teardown
  disposable_registry   a fresh registry of this test's own, on a free port, removed
                        after: the one to stop and restart mid-push
  hook_log              Path of the fake hook's JSON-lines log (one line per call)
  hook_calls            hook_calls(container_id) -> the hook's records for it
  docker_cleanup        removes the containers and images a test registers (and
                        every container carrying its label) at teardown
  unique_name           a short unique lowercase name for tags and containers
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = REPO_ROOT / ".aibuild-test-env"
REGISTRY_SCRIPT = REPO_ROOT / "scripts" / "registry.sh"
SETUP_HINT = "run `make engine` (scripts/test-env.sh) first"
TEST_LABEL = "ai.aibuild.test"


# --------------------------------------------------------------------------- env


def _parse_env_file(path: Path) -> dict[str, str]:
    """Read ``export NAME=value`` lines (values quoted as bash's printf %q does)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            name, sep, value = word.partition("=")
            if sep:
                values[name] = value
    return values


@dataclass(frozen=True)
class TestEnv:
    """The prepared environment: the process environment over .aibuild-test-env."""

    values: dict[str, str]
    source: str

    __test__ = False  # not a test class, despite the name

    def require(self, name: str) -> str:
        value = self.values.get(name, "")
        if not value:
            pytest.fail(f"{name} is not set ({self.source}): {SETUP_HINT}", pytrace=False)
        return value

    @classmethod
    def load(cls) -> TestEnv:
        values: dict[str, str] = {}
        source = "environment"
        if ENV_FILE.is_file():
            values.update(_parse_env_file(ENV_FILE))
            source = f"environment, {ENV_FILE}"
        else:
            source = f"environment; {ENV_FILE} does not exist"
        for name, value in os.environ.items():
            if name == "DOCKER_HOST" or name.startswith("AIBUILD_TEST_"):
                values[name] = value
        return cls(values, source)


@pytest.fixture(scope="session")
def test_env() -> TestEnv:
    return TestEnv.load()


# ------------------------------------------------------------------------ engines


def _client(host: str, what: str) -> docker.DockerClient:
    try:
        # A long read timeout: a build step can stay silent for minutes on a
        # loaded 2-core machine (pip installing torch, compileall).
        client = docker.DockerClient(base_url=host, version="auto", timeout=900)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"{what} at {host} does not answer ({exc}): {SETUP_HINT}", pytrace=False)
    return client


@pytest.fixture(scope="session")
def docker_host(test_env: TestEnv) -> str:
    return test_env.require("DOCKER_HOST")


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = _client(docker_host, "the Docker engine")
    yield client
    client.close()


@pytest.fixture(scope="session")
def nohook_docker_host(test_env: TestEnv) -> str:
    return test_env.require("AIBUILD_TEST_NOHOOK_DOCKER_HOST")


@pytest.fixture(scope="session")
def nohook_docker_client(nohook_docker_host: str) -> Iterator[docker.DockerClient]:
    client = _client(nohook_docker_host, "the engine without the NVIDIA hook")
    yield client
    client.close()


# The engines every engine-facing tier is meant to pass on (make test-engines runs the
# tiers with DOCKER_HOST set to each Docker 26 engine in turn; the "engines" tests use
# all three at once). Names as docs/engines.md writes them.
ENGINE_VARS = {
    "docker20.10": "DOCKER_HOST",
    "docker26-classic": "AIBUILD_TEST_CLASSIC26_DOCKER_HOST",
    "docker26-containerd": "AIBUILD_TEST_CONTAINERD26_DOCKER_HOST",
}


@pytest.fixture(scope="session")
def engine_hosts(test_env: TestEnv) -> dict[str, str]:
    """{engine name: DOCKER_HOST} for Docker 20.10 (the system's; the default
    DOCKER_HOST of .aibuild-test-env, whatever DOCKER_HOST this run overrides it with)
    and the two Docker 26 engines scripts/test-env.sh starts."""
    hosts = {name: test_env.require(var) for name, var in ENGINE_VARS.items()}
    if ENV_FILE.is_file():  # the system engine, even when DOCKER_HOST points elsewhere
        hosts["docker20.10"] = _parse_env_file(ENV_FILE).get("DOCKER_HOST") or hosts["docker20.10"]
    for name, host in hosts.items():
        _client(host, f"the {name} engine").close()
    return hosts


@pytest.fixture(scope="session")
def base_image(test_env: TestEnv, docker_client: docker.DockerClient) -> str:
    name = test_env.require("AIBUILD_TEST_BASE_IMAGE")
    try:
        docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        pytest.fail(f"base image {name} is not in the engine: {SETUP_HINT}", pytrace=False)
    return name


@pytest.fixture(scope="session")
def build_network(test_env: TestEnv) -> str:
    mode = test_env.require("AIBUILD_TEST_BUILD_NETWORK")
    if mode == "none":
        pytest.fail(
            "scripts/test-env.sh found no network mode in which containers reach "
            "Debian's mirror; see its output",
            pytrace=False,
        )
    return mode


@pytest.fixture(scope="session")
def wheelhouse(test_env: TestEnv) -> Path:
    path = Path(test_env.require("AIBUILD_TEST_WHEELHOUSE"))
    if not (path / ".complete").is_file() or not list(path.glob("torch-2.13.0+cpu-*.whl")):
        pytest.fail(f"wheelhouse {path} is incomplete: {SETUP_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def dev_wheelhouse(test_env: TestEnv) -> Path:
    path = Path(test_env.require("AIBUILD_TEST_DEV_WHEELHOUSE"))
    if not (path / ".complete").is_file() or not list(path.glob("jupyterlab-*.whl")):
        pytest.fail(f"wheelhouse {path} is incomplete: {SETUP_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def devcontainer_cli(test_env: TestEnv) -> Path:
    path = Path(test_env.require("AIBUILD_TEST_DEVCONTAINER_CLI"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"the Dev Containers CLI {path} is not there: {SETUP_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def ca_cert(test_env: TestEnv) -> Path:
    path = Path(test_env.require("AIBUILD_TEST_CA_CERT"))
    if not path.is_file():
        pytest.fail(f"CA bundle {path} does not exist", pytrace=False)
    return path


# ----------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Registry:
    """A local registry: ``host`` is "127.0.0.1:PORT"; str() gives it too."""

    name: str
    host: str
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return self.host

    @property
    def auth_config(self) -> dict[str, str] | None:
        """For docker-py's push(auth_config=...), or None without auth."""
        if self.username is None or self.password is None:
            return None
        return {"username": self.username, "password": self.password}

    def repo(self, path: str) -> str:
        return f"{self.host}/{path}"

    def api(self, path: str, *, method: str = "GET", accept: str | None = None) -> Any:
        """Call the registry's HTTP API (``/v2/...``); JSON body or headers for HEAD."""
        request = urllib.request.Request(f"http://{self.host}{path}", method=method)
        if accept:
            request.add_header("Accept", accept)
        if self.username is not None and self.password is not None:
            token = b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            if method == "HEAD":
                return dict(response.headers.items())
            body = response.read()
            return json.loads(body) if body else None

    def tags(self, repository: str) -> list[str]:
        """Tags of ``repository`` (path without the host); [] when it does not exist."""
        try:
            result = self.api(f"/v2/{repository}/tags/list")
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                return []
            raise
        return sorted(result.get("tags") or [])

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry serves for repository:tag (what a push reports)."""
        headers = self.api(
            f"/v2/{repository}/manifests/{tag}",
            method="HEAD",
            accept=", ".join(
                [
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.oci.image.index.v1+json",
                ]
            ),
        )
        return str(headers["Docker-Content-Digest"])


@pytest.fixture(scope="session")
def registry(test_env: TestEnv) -> Registry:
    host = test_env.require("AIBUILD_TEST_REGISTRY")
    _check_registry(host)
    return Registry("plain", host)


@pytest.fixture(scope="session")
def auth_registry(test_env: TestEnv) -> Registry:
    host = test_env.require("AIBUILD_TEST_AUTH_REGISTRY")
    _check_registry(host)
    return Registry(
        "auth",
        host,
        username=test_env.require("AIBUILD_TEST_AUTH_USER"),
        password=test_env.require("AIBUILD_TEST_AUTH_PASSWORD"),
    )


def _check_registry(host: str) -> None:
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=10).close()
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 401:
            return  # answers, wants credentials
        pytest.fail(f"registry {host} answers {exc.code}: {SETUP_HINT}", pytrace=False)
    except OSError as exc:
        pytest.fail(f"registry {host} does not answer ({exc}): {SETUP_HINT}", pytrace=False)


@dataclass
class RegistryControl:
    """Drives scripts/registry.sh. Shared registries this stops are restarted at
    teardown, so a failing test cannot leave them down for the rest of the run."""

    env: dict[str, str]
    stopped: set[str] = field(default_factory=set)

    def _run(
        self, action: str, name: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(REGISTRY_SCRIPT), action, name],
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0 and action != "status":
            raise RuntimeError(
                f"scripts/registry.sh {action} {name} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def start(self, name: str, **extra_env: str) -> None:
        """Start NAME (idempotent). Ad hoc names need AIBUILD_REGISTRY_PORT="N"."""
        self._run("start", name, extra_env)
        self.stopped.discard(name)

    def stop(self, name: str) -> None:
        self._run("stop", name)
        self.stopped.add(name)

    def restart(self, name: str) -> None:
        self._run("restart", name)
        self.stopped.discard(name)

    def is_running(self, name: str) -> bool:
        return self._run("status", name).returncode == 0


@pytest.fixture
def registry_control(test_env: TestEnv) -> Iterator[RegistryControl]:
    env = dict(os.environ)
    env["AIBUILD_TEST_STATE"] = test_env.values.get("AIBUILD_TEST_STATE", "/var/lib/aibuild-test")
    control = RegistryControl(env)
    yield control
    for name in sorted(control.stopped):
        control.start(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def disposable_registry(registry_control: RegistryControl, test_env: TestEnv) -> Iterator[Registry]:
    """A registry of this test's own (no auth), stopped and deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    port = _free_port()
    registry_control.start(name, AIBUILD_REGISTRY_PORT=str(port))
    yield Registry(name, f"127.0.0.1:{port}")
    registry_control._run("stop", name)
    registry_control.stopped.discard(name)
    state = Path(registry_control.env["AIBUILD_TEST_STATE"])
    shutil.rmtree(state / "registry" / name, ignore_errors=True)


# --------------------------------------------------------------------------- hook


@pytest.fixture(scope="session")
def hook_log(test_env: TestEnv) -> Path:
    return Path(test_env.require("AIBUILD_TEST_HOOK_LOG"))


@pytest.fixture
def hook_calls(hook_log: Path) -> Callable[[str], list[dict[str, Any]]]:
    """hook_calls(container_id): what the fake hook recorded for that container
    (full or short id), oldest first. The log is shared by every test and
    engineer on this machine; records are told apart by container id."""

    def calls(container_id: str) -> list[dict[str, Any]]:
        if not hook_log.exists():
            return []
        records = []
        for line in hook_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if str(record.get("id") or "").startswith(container_id):
                    records.append(record)
        return records

    return calls


# ------------------------------------------------------------------------ cleanup


@dataclass
class DockerCleanup:
    """Registers what a test creates; removes it at teardown.

    ``label`` is {"ai.aibuild.test": <this test's id>}: put it on containers the
    code under test creates (when it lets you) and they go too, even unregistered.
    """

    client: docker.DockerClient
    label: dict[str, str]
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def container(self, container: Any) -> Any:
        self.containers.append(getattr(container, "id", container))
        return container

    def image(self, ref: Any) -> Any:
        """Register an image: a tag or id (str) is removed as given; an Image object
        by its tags, so an identical image another test tagged differently stays."""
        tags = getattr(ref, "tags", None)
        if tags:
            self.images.extend(tags)
        else:
            self.images.append(getattr(ref, "id", ref))
        return ref

    def run(self) -> None:
        key, value = next(iter(self.label.items()))
        labelled = self.client.containers.list(all=True, filters={"label": f"{key}={value}"})
        for ident in [*self.containers, *(c.id for c in labelled)]:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(ident, force=True, v=True)
        for ref in reversed(self.images):
            with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.NotFound):
                self.client.api.remove_image(ref, force=True)


@pytest.fixture
def docker_cleanup(docker_client: docker.DockerClient, unique_name: str) -> Iterator[DockerCleanup]:
    cleanup = DockerCleanup(docker_client, {TEST_LABEL: unique_name})
    yield cleanup
    cleanup.run()


@pytest.fixture
def unique_name() -> str:
    return f"aibuild-test-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------ signals

STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)


def default_signals() -> None:
    """``preexec_fn`` for a child a test stops with a signal: the stop signals at their
    default disposition. A shell starts background jobs with SIGINT and SIGQUIT ignored
    (and nohup ignores SIGHUP); a child inherits that, so without this a test run from
    a background script sends a Ctrl-C that never arrives."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


# --------------------------------------------------------------------------- the cpu image
# Built once per session by the README's air-gapped command and shared by every module
# that needs it (test_build checks the build, test_run runs it): one cold torch build
# instead of one per module.

CPU_SETS = ("--set", "software.torch=2.13.0", "--set", "software.python=3.11")
CPU_BUILD_TIMEOUT = 3600


def run_aibuild(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CPU_BUILD_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "aibuild", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def aibuild_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``aibuild_cli(*args, cwd=, env=, timeout=)``: the real CLI in a subprocess."""
    return run_aibuild


@dataclass(frozen=True)
class CpuBuild:
    """The session's cpu image: the CLI's result, the directory it ran in, its image ID."""

    result: subprocess.CompletedProcess[str]
    directory: Path
    image_id: str
    record: dict[str, Any]


@pytest.fixture(scope="session")
def build_cpu(
    base_image: str, wheelhouse: Path, build_network: str
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """build_cpu(cwd, *extra_args): `aibuild image cpu --base-image B --wheelhouse W ...`."""

    def build(cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_aibuild(
            "image",
            "cpu",
            "--base-image",
            base_image,
            "--wheelhouse",
            str(wheelhouse),
            *CPU_SETS,
            *extra,
            cwd=cwd,
            env={"AIBUILD_BUILD_NETWORK": build_network},
        )

    return build


@pytest.fixture(scope="session")
def cpu_build(
    build_cpu: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> CpuBuild:
    directory = tmp_path_factory.mktemp("aibuild-builds")
    result = build_cpu(directory)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("build record: ")]
    assert lines, result.stdout
    record = json.loads((directory / lines[-1].removeprefix("build record: ")).read_text())
    return CpuBuild(result, directory, record["image_id"], record)


@pytest.fixture(scope="session")
def cpu_image(cpu_build: CpuBuild) -> str:
    """The cpu profile's image ID."""
    return cpu_build.image_id
