"""`aibuild shell`, `run -it`, `--live`, `aibuild jupyter` and `aibuild devcontainer`: what
they ask the engine for, what they write, and their refusals (no engine needed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aibuild.errors import RenderError, RunError
from aibuild.profile.resolve import plan_for
from aibuild.run.config import (
    ContainerOptions,
    RunTarget,
    container_config,
    with_plan_defaults,
)
from aibuild.run.devcontainer import (
    GENERATED_MARK,
    devcontainer_config,
    render_devcontainer,
    write_devcontainer,
)
from aibuild.run.gpus import parse_gpus
from aibuild.run.interactive import shell_options
from aibuild.run.jupyter import check_port, dev_target, jupyter_command
from tests.unit.conftest import invoke, one_clean_line

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mnist" / "aibuild.yaml"


def example_target() -> RunTarget:
    plan = plan_for(str(EXAMPLE))
    return RunTarget(plan.image_ref, plan, f"aibuild image {EXAMPLE}")


# --------------------------------------------------------------------------- containers


def test_an_interactive_container_is_docker_run_it() -> None:
    config = container_config(ContainerOptions(args=("bash",), interactive=True, tty=True), "i")
    assert config["tty"] is True and config["stdin_open"] is True
    assert config["detach"] is False  # docker-py: AttachStdin and StdinOnce, as docker run -i
    assert config["entrypoint"] == ["bash"] and config["auto_remove"] is True
    assert config["environment"]["HOME"] == "/tmp" and ":" in config["user"]  # your uid
    assert {u["Name"] for u in config["ulimits"]} == {"memlock", "stack"}
    plain = container_config(ContainerOptions(), "i")
    assert "tty" not in plain and "stdin_open" not in plain and plain["detach"] is True


def test_live_mounts_the_project_at_its_workdir_as_you() -> None:
    options = with_plan_defaults(ContainerOptions(live=True), example_target())
    assert options.project_mount == (str(EXAMPLE.parent), "/workspace")
    config = container_config(options, "i")
    mount = next(m for m in config["mounts"] if m["Target"] == "/workspace")
    assert mount["Source"] == str(EXAMPLE.parent) and mount["Type"] == "bind"
    assert not mount.get("ReadOnly")
    assert config["environment"]["HOME"] == "/tmp" and "user" in config


def test_live_without_a_project_is_refused() -> None:
    plan = plan_for("cpu")
    with pytest.raises(RunError, match="has no project: section"):
        with_plan_defaults(ContainerOptions(live=True), RunTarget(plan.image_ref, plan))
    with pytest.raises(RunError, match="not a profile"):
        with_plan_defaults(ContainerOptions(live=True), RunTarget("busybox"))


def test_nproc_per_node_with_a_project_command_is_refused() -> None:
    with pytest.raises(RunError, match="put torchrun in it"):
        with_plan_defaults(ContainerOptions(nproc_per_node=2), example_target())


def test_the_shell_is_bash_with_a_tty_and_the_project_live() -> None:
    options = shell_options(ContainerOptions(), example_target())
    assert options.args == ("bash",) and options.tty and options.interactive and options.live
    cpu = plan_for("cpu")
    assert not shell_options(ContainerOptions(), RunTarget(cpu.image_ref, cpu)).live


@pytest.mark.parametrize(
    "args", [["shell", "cpu"], ["run", "-it", "cpu", "--", "bash"], ["run", "-t", "cpu"]]
)
def test_a_tty_without_a_terminal_is_one_line(args: list[str]) -> None:
    line = one_clean_line(invoke(*args))
    assert "stdin is not a terminal" in line


def test_it_and_detach_exclude_each_other() -> None:
    result = invoke("run", "-it", "-d", "cpu")
    assert result.exit_code == 2 and "choose one" in result.stderr


# --------------------------------------------------------------------------- jupyter


def test_jupyter_listens_on_loopback_with_a_fresh_token_in_the_dev_image() -> None:
    target = dev_target(example_target())
    assert target.image.endswith("-dev")
    command = jupyter_command(8899, "/workspace")
    assert command[:2] == ("jupyter", "lab") and "--ServerApp.port=8899" in command
    assert "--ServerApp.root_dir=/workspace" in command
    config = container_config(ContainerOptions(ports=((8899, "127.0.0.1", 8899),)), "i")
    assert config["ports"] == {"8899/tcp": ("127.0.0.1", 8899)}


def test_jupyter_needs_a_dev_image() -> None:
    line = one_clean_line(invoke("jupyter", "cpu"))
    assert "has no dev image" in line and "dev: {jupyter: true}" in line


def test_a_port_that_is_taken_is_one_line() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(RunError, match=f"port {port} on 127.0.0.1 is taken"):
            check_port(port)
        line = one_clean_line(invoke("jupyter", str(EXAMPLE), "--port", str(port)))
        assert f"port {port} on 127.0.0.1 is taken" in line


# --------------------------------------------------------------------------- devcontainer


def test_devcontainer_follows_the_spec_and_the_run_defaults(tmp_path: Path) -> None:
    plan = plan_for(str(EXAMPLE))
    config = devcontainer_config(
        plan, EXAMPLE.parent.parent, gpus=parse_gpus("device=0,1"), data=tmp_path
    )
    assert config["image"] == plan.dev_image_ref  # the dev image: notebooks need its kernel
    assert config["runArgs"] == [
        "--gpus",
        '"device=0,1"',
        "--shm-size=2g",
        "--ulimit",
        "memlock=-1",
        "--ulimit",
        "stack=67108864",
    ]
    assert config["workspaceMount"] == (
        "source=${localWorkspaceFolder}/mnist,target=/workspace,type=bind"
    )
    assert config["workspaceFolder"] == "/workspace"
    assert config["remoteUser"] == config["containerUser"] == "aibuild"
    assert config["updateRemoteUserUID"] is True
    assert config["mounts"] == [f"source={tmp_path},target=/data,type=bind,readonly"]
    cpu = devcontainer_config(plan_for("cpu"), tmp_path, gpus=None, memlock=False)
    assert cpu["image"] == plan_for("cpu").image_ref
    assert cpu["runArgs"] == ["--shm-size=2g", "--ulimit", "stack=67108864"]
    assert cpu["workspaceMount"].startswith("source=${localWorkspaceFolder},")


def test_devcontainer_is_jsonc_with_the_mark(tmp_path: Path) -> None:
    plan = plan_for("cpu")
    text = render_devcontainer(plan, devcontainer_config(plan, tmp_path, gpus=None))
    assert text.startswith(GENERATED_MARK)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    assert json.loads(body)["image"] == plan.image_ref


def test_devcontainer_replaces_only_its_own_file(tmp_path: Path) -> None:
    plan = plan_for("cpu")
    config = devcontainer_config(plan, tmp_path, gpus=None)
    path = write_devcontainer(plan, tmp_path, config)
    assert path == tmp_path / ".devcontainer" / "devcontainer.json"
    write_devcontainer(plan, tmp_path, {**config, "name": "again"})  # ours: replaced
    assert '"name": "again"' in path.read_text()
    path.write_text('{"image": "mine"}\n')
    with pytest.raises(RenderError, match="aibuild did not write it"):
        write_devcontainer(plan, tmp_path, config)
    assert path.read_text() == '{"image": "mine"}\n'
    line = one_clean_line(invoke("devcontainer", "cpu", "--workspace", str(tmp_path)))
    assert "aibuild did not write it" in line  # said before the engine is contacted
    other = tmp_path / "other"
    other.mkdir()
    (other / ".devcontainer").write_text("a file")
    with pytest.raises(RenderError, match="is not a folder"):
        write_devcontainer(plan, other, config)


def test_devcontainer_needs_the_project_inside_the_workspace(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="not inside the workspace"):
        devcontainer_config(plan_for(str(EXAMPLE)), tmp_path, gpus=None)
