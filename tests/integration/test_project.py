"""A user's own code in an image, through the real engine and the real tools: the example
project (examples/mnist) built with its requirements and a dev image, run with --gpus
(the fake NVIDIA hook), edited and rebuilt (only the code layer; only the requirements
layer), mounted live, opened in a shell driven through tmux, in JupyterLab (its REST API
and a kernel that imports torch) and with the Dev Containers CLI; bad input fails with one
line and leaves no container.

The example is copied into a git checkout of its own (for the source labels), and built
once for the module under its own image name; the images are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.conftest import default_signals, run_aibuild

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mnist"
NAME = "aibuild-test/example"
TAG = f"{NAME}:mnist-torch2.13.0-cpu"
DEV_TAG = f"{TAG}-dev"
SETS = (
    "--set",
    "software.torch=2.13.0",
    "--set",
    "software.python=3.11",
    "--set",
    f"image.name={NAME}",
)
REMOTE = "https://someone:secret@example.com/team/mnist.git"


def aibuild(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_aibuild(*args, cwd=cwd, env=env, timeout=900)


def errors(stderr: str) -> list[str]:
    """stderr without aibuild's warnings (this engine cannot raise memlock, and says so)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "warning:" not in ln]


@dataclass
class Example:
    project: Path
    profile: Path
    build: Callable[..., dict[str, Any]]
    first: dict[str, Any]
    client: docker.DockerClient

    def containers(self) -> list[Any]:
        """Every container, running or not, of the example's two images."""
        found = []
        for tag in (TAG, DEV_TAG):
            with contextlib.suppress(docker.errors.ImageNotFound):
                image = self.client.images.get(tag).id
                found += self.client.containers.list(all=True, filters={"ancestor": image})
        return found


@pytest.fixture(scope="module")
def example(
    tmp_path_factory: pytest.TempPathFactory,
    base_image: str,
    dev_wheelhouse: Path,
    build_network: str,
    docker_client: docker.DockerClient,
) -> Iterator[Example]:
    project = tmp_path_factory.mktemp("example") / "mnist"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "mnist"]):
        subprocess.run([*git, *args], check=True)
    subprocess.run([*git, "remote", "add", "origin", REMOTE], check=True)
    profile = project / "aibuild.yaml"

    def build(*extra: str) -> dict[str, Any]:
        # run in the project folder: its .aibuild/ build records must stay out of the image
        result = aibuild(
            "image",
            str(profile),
            "--base-image",
            base_image,
            "--wheelhouse",
            str(dev_wheelhouse),
            *SETS,
            *extra,
            "--json",
            cwd=project,
            env={"AIBUILD_BUILD_NETWORK": build_network},
        )
        assert result.returncode == 0, result.stderr[-5000:]
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    try:
        yield Example(project, profile, build, build(), docker_client)
    finally:
        for tag in (DEV_TAG, TAG):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


def test_the_example_builds_its_code_last_with_a_dev_image_beside(example: Example) -> None:
    first, client = example.first, example.client
    assert first["tags"] == [TAG] and first["dev_image"]["tag"] == DEV_TAG
    image = client.images.get(TAG)
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["python", "train.py", "--epochs", "5"]
    assert config["WorkingDir"] == "/workspace"
    head = subprocess.run(
        ["git", "-C", str(example.project), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert config["Labels"]["org.opencontainers.image.revision"] == head
    assert config["Labels"]["org.opencontainers.image.source"] == (
        "https://example.com/team/mnist.git"  # never the credentials
    )
    assert first["steps"][-1]["instruction"] == "COPY --chown=1000:1000 project/ /workspace/"
    probe = "import importlib.util as u, numpy; print(u.find_spec('jupyterlab') is not None)"
    shown = {
        tag: client.containers.run(tag, ["python", "-c", probe], entrypoint=[], remove=True)
        for tag in (TAG, DEV_TAG)
    }
    assert shown == {TAG: b"False\n", DEV_TAG: b"True\n"}  # numpy: the project's requirement
    listed = client.containers.run(TAG, ["ls", "-A", "/workspace"], entrypoint=[], remove=True)
    assert sorted(listed.decode().split()) == ["aibuild.yaml", "requirements.txt", "train.py"]


# The engine is shared: a concurrent --no-cache build (another test, another checkout)
# makes fresh copies of the metadata layers (SHELL, ARG, ENV), and the classic builder
# then continues from the newest copy, whose children hold no installs. A build and the
# rebuild after a change are therefore tried twice (as in test_cache); a real
# cache-busting change to the layer order misses on both tries.
ATTEMPTS = 2


def rebuilt_after(
    example: Example,
    change: Callable[[], None],
    good: Callable[[dict[str, Any]], bool],
    *sets: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the build before, the build after ``change``); retried once unless ``good``."""
    for attempt in range(1, ATTEMPTS + 1):
        before = example.build(*sets)
        change()
        after = example.build(*sets)
        if good(after) or attempt == ATTEMPTS:
            break
    return before, after


def uncached(build: dict[str, Any]) -> list[str]:
    return [
        s["instruction"]
        for s in build["steps"]
        if not s["cached"] and not s["instruction"].startswith("FROM")
    ]


def test_a_code_edit_rebuilds_one_layer_and_a_requirements_edit_no_torch(
    example: Example,
) -> None:
    # a no-op: build records were written into the project folder, and are left out
    _, noop = rebuilt_after(example, lambda: None, lambda build: not uncached(build))
    assert uncached(noop) == []

    train = example.project / "train.py"

    def edit_code() -> None:
        train.write_text(train.read_text() + f"\n# an edit {secrets.token_hex(4)}\n")

    code = ["COPY --chown=1000:1000 project/ /workspace/"]
    before, edited = rebuilt_after(example, edit_code, lambda build: uncached(build) == code)
    assert uncached(edited) == code
    assert edited["image_id"] != before["image_id"]

    requirements = example.project / "requirements.txt"
    original = requirements.read_text()

    def edit_requirements() -> None:
        # a list no earlier build on this engine had (its layer would be a cache hit)
        requirements.write_text(f"{original}mpmath!=0.{secrets.randbelow(10**9)}\n")

    def torch_cached(build: dict[str, Any]) -> bool:
        return not any("torch==2.13.0" in i or "apt-get" in i for i in uncached(build))

    # the training image alone: the dev image's JupyterLab layer comes after the
    # requirements, and would only add its reinstall to the test's time
    no_dev = ("--set", "dev.jupyter=false")
    _, changed = rebuilt_after(example, edit_requirements, torch_cached, *no_dev)
    assert torch_cached(changed), uncached(changed)  # torch and the system: never again
    # The venv is installed from exact pins, one layer per group (docs/layers-and-compression.md):
    # this edit resolves to the pins it had, so no venv layer is installed again; only what
    # records the requirements (labels) and what follows them is rebuilt.
    assert not any("pip install" in i for i in uncached(changed)), uncached(changed)
    assert any(i.startswith("LABEL ") for i in uncached(changed)), uncached(changed)


def test_run_runs_the_project_command_with_gpus(
    example: Example, tmp_path: Path, hook_log: Path
) -> None:
    mark = uuid.uuid4().hex
    result = aibuild(
        "run",
        str(example.profile),
        *SETS,
        "--gpus",
        "all",
        "-e",
        f"NVIDIA_AIBUILD_TEST_MARK={mark}",  # the fake hook records NVIDIA_* variables
        "--output",
        str(tmp_path / "out"),
        "--",
        "--epochs",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "results in /output" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["accuracy"] > 0.5
    assert (tmp_path / "out" / "mnist_cnn.pt").stat().st_uid == os.getuid()
    records = [json.loads(line) for line in hook_log.read_text().splitlines() if mark in line]
    assert records and records[0]["NVIDIA_VISIBLE_DEVICES"] == "all"
    # the embedded trainer stays callable
    trainer = aibuild(
        "run", str(example.profile), *SETS, "--", "aibuild", "train", "--dry-run", cwd=tmp_path
    )
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    assert example.containers() == []


def test_live_runs_the_code_as_it_is_on_disk(example: Example, tmp_path: Path) -> None:
    probe = example.project / "live_probe.py"
    probe.write_text("import os\nprint('live', os.getcwd())\nopen('made-inside', 'w').close()\n")
    try:
        result = aibuild(
            "run", str(example.profile), *SETS, "--live", "--", "python", "live_probe.py",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "live /workspace" in result.stdout  # never built into the image
        made = example.project / "made-inside"
        assert made.stat().st_uid == os.getuid()  # written as you, into your folder
    finally:
        probe.unlink()
        (example.project / "made-inside").unlink(missing_ok=True)


class Tmux:
    """One tmux session of our own (its own server socket), driven like a user would."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "tmux.sock"
        self.name = "aibuild-shell"

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", self.name)

    def wait_for(self, text: str, seconds: float = 60) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            shown = self.pane()
            if text in shown:
                return shown
            time.sleep(0.2)
        pytest.fail(f"{text!r} never showed in the pane:\n{self.pane()}")

    def type(self, line: str) -> None:
        self("send-keys", "-t", self.name, "-l", line)
        self("send-keys", "-t", self.name, "Enter")


def test_a_shell_in_tmux(example: Example, tmp_path: Path) -> None:
    """A real terminal: keys, a resize, Ctrl-C to the foreground program, Ctrl-D after a
    command that exited 3; the exit code is the shell's and no container is left."""
    tmux = Tmux(tmp_path)
    done = tmp_path / "exit-code"
    command = (
        f"{sys.executable} -m aibuild shell {example.profile} {' '.join(SETS)}; "
        f"echo $? > {done}; sleep 600"
    )
    tmux("-f", "/dev/null", "new-session", "-d", "-s", tmux.name, "-x", "100", "-y", "30",
         "-c", str(tmp_path), command)  # fmt: skip
    try:
        tmux.wait_for(":/workspace")  # bash's prompt
        tmux.type("echo READY-$((6 * 7))")
        tmux.wait_for("READY-42")
        tmux.type('touch "$HOME/w" && echo "SIZE=$(stty size) UID=$(id -u) HOME=$HOME."')
        tmux.wait_for(f"SIZE=30 100 UID={os.getuid()} HOME=/tmp.")  # a HOME it can write
        (example.project / "from-the-host.txt").write_text("live\n")  # the project is live
        tmux.type("tr a-z A-Z < from-the-host.txt")
        tmux.wait_for("LIVE")
        tmux("resize-window", "-t", tmux.name, "-x", "120", "-y", "40")
        time.sleep(0.5)
        tmux.type('echo "SIZE=$(stty size)."')
        tmux.wait_for("SIZE=40 120.")
        tmux.type("sleep 300; echo SLEPT-$((1 + 1))")
        time.sleep(1.0)
        tmux("send-keys", "-t", tmux.name, "C-c")
        tmux.type("echo STILL-HERE-$?")
        shown = tmux.wait_for("STILL-HERE-130")  # sleep got SIGINT; the shell lives on
        assert "SLEPT-2" not in shown
        tmux.type("(exit 3)")
        tmux("send-keys", "-t", tmux.name, "C-d")  # ends the session: bash exits with 3
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "3", tmux.pane()
        assert example.containers() == []
    finally:
        (example.project / "from-the-host.txt").unlink(missing_ok=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            tmux("kill-server")


def kernel_runs(base: str, token: str, code: str) -> tuple[str, list[str]]:
    """Start a kernel through the REST API, run CODE on its websocket channel; (status, the
    stdout it printed)."""
    import websocket

    request = urllib.request.Request(
        f"{base}/api/kernels",
        data=b'{"name": "python3"}',
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        kernel = json.loads(response.read())["id"]
    channel = websocket.create_connection(
        f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels",
        header=[f"Authorization: token {token}"],
        timeout=120,
    )
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "version": "5.3"}
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    channel.send(
        json.dumps(
            {
                "header": {**header, "username": "test", "session": uuid.uuid4().hex},
                "parent_header": {},
                "metadata": {},
                "content": {**content, "user_expressions": {}, "stop_on_error": True},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    printed: list[str] = []
    try:
        while True:
            message = json.loads(channel.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                printed.append(message["content"]["text"])
            if message["msg_type"] == "execute_reply":
                return str(message["content"]["status"]), printed
    finally:
        channel.close()


def test_jupyter(example: Example, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aibuild", "jupyter", str(example.profile), *SETS],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # stopped with SIGINT: not ignored by inheritance
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed once /api/status answers
        assert url.startswith("http://127.0.0.1:") and "/lab?token=" in url, url
        base, token = url.split("/lab?token=")
        authorized = {"Authorization": f"token {token}"}
        status = urllib.request.Request(f"{base}/api/status", headers=authorized)
        with urllib.request.urlopen(status, timeout=30) as response:
            assert response.status == 200 and "started" in json.loads(response.read())
        for refused in (f"{base}/api/status", f"{base}/api/kernels?token=wrong"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(refused, timeout=30).close()
            assert caught.value.code == 403
            caught.value.close()
        status, printed = kernel_runs(
            base, token, "import torch, os; print(torch.__version__, os.getcwd())"
        )
        assert status == "ok" and "".join(printed).startswith("2.13.0+cpu /workspace"), printed
        container = example.containers()[0]
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert [b["HostIp"] for bs in bindings.values() for b in bs] == ["127.0.0.1"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err
        assert example.containers() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_dev_container_cli_opens_the_project(
    example: Example, devcontainer_cli: Path, hook_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    client = example.client
    written = aibuild(
        "devcontainer", str(example.profile), *SETS, "--gpus", "all", cwd=example.project
    )
    assert written.returncode == 0, written.stderr
    folder = str(example.project)
    try:
        up = subprocess.run(
            [str(devcontainer_cli), "up", "--workspace-folder", folder],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        outcome = json.loads(up.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "success", up.stdout[-3000:] + up.stderr[-3000:]
        ran = subprocess.run(
            [str(devcontainer_cli), "exec", "--workspace-folder", folder, "python", "-c",
             "import torch, os; print(torch.__version__, os.getcwd(), os.listdir())"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stdout.startswith("2.13.0+cpu /workspace") and "train.py" in ran.stdout
        container = client.containers.get(outcome["containerId"])
        requests = container.attrs["HostConfig"]["DeviceRequests"]
        assert requests and requests[0]["Count"] == -1  # --gpus all, from runArgs
        assert hook_calls(container.id), "the NVIDIA prestart hook was not called"
        assert container.attrs["HostConfig"]["ShmSize"] == 2 << 30
    finally:
        for found in client.containers.list(
            all=True, filters={"label": f"devcontainer.local_folder={folder}"}
        ):
            found.remove(force=True)
        for image in client.images.list():
            if any(t.startswith(f"vsc-{example.project.name}-") for t in image.tags):
                client.images.remove(image.id, force=True)


def test_run_i_pipes_stdin_through(example: Example, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aibuild", "run", "-i", str(example.profile), *SETS, "--",
         "python", "-c", "import sys; print(sys.stdin.read().upper(), end='')"],
        input="piped through\n", capture_output=True, text=True, timeout=120, cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "PIPED THROUGH\n"  # its end closed the container's stdin
    assert example.containers() == []


def test_a_command_not_in_the_image_is_one_line(example: Example, tmp_path: Path) -> None:
    result = aibuild("run", str(example.profile), *SETS, "--", "no-such-program", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = errors(result.stderr)
    assert "its command is not in the image" in line and "no-such-program" in line
    assert example.containers() == []
