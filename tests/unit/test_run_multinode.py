"""What `aibuild run --nodes N` asks the engine for, node by node (no engine needed); the
real run is in tests/integration/test_cluster.py."""

from __future__ import annotations

import io
import threading

import pytest

from aibuild.errors import RunError
from aibuild.logs import silent
from aibuild.run.config import ContainerOptions, RunTarget
from aibuild.run.gpus import parse_gpus
from aibuild.run.lifecycle import Console
from aibuild.run.multinode import _Prefixed, node_configs, run_nodes


def test_every_node_runs_torchrun_with_node0_hosting() -> None:
    options = ContainerOptions(args=("--epochs", "1"), nproc_per_node=2, output="/tmp/o")
    configs = node_configs(options, "img:1", 3, "job")
    assert [c["name"] for c in configs] == ["job-node0", "job-node1", "job-node2"]
    assert [c["hostname"] for c in configs] == ["job-node0", "job-node1", "job-node2"]
    assert {c["network"] for c in configs} == {"job"}
    for config in configs:
        argv = config["entrypoint"] + config["command"]
        assert argv[:3] == ["torchrun", "--nnodes", "3"]
        assert argv[argv.index("--nproc-per-node") + 1] == "2"
        assert argv[argv.index("--rdzv-backend") + 1] == "c10d"
        assert argv[argv.index("--rdzv-endpoint") + 1] == "job-node0:29500"
        assert argv[argv.index("--rdzv-id") + 1] == "job"
        assert argv[-4:] == ["aibuild", "train", "--epochs", "1"]
        # aibuild run's config: output mount, the ulimits, the rank prefix
        assert config["environment"]["AIBUILD_OUTPUT"] == "/output"
        assert {u["Name"] for u in config["ulimits"]} == {"memlock", "stack"}
        assert config["environment"]["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]: "
        assert config["auto_remove"] is True  # gone even if aibuild is killed


def test_names_sort_in_node_order() -> None:
    """The rendezvous ranks nodes by their names: node 10 must not come before node 2."""
    names = [c["hostname"] for c in node_configs(ContainerOptions(), "img", 12, "j")]
    assert names == sorted(names) and names[2] == "j-node02"


def test_named_gpus_are_shared_out() -> None:
    options = ContainerOptions(gpus=parse_gpus("device=0,1,2,3"))
    configs = node_configs(options, "img", 2, "j")
    assert [c["device_requests"][0]["DeviceIDs"] for c in configs] == [["0", "1"], ["2", "3"]]
    counted = node_configs(ContainerOptions(gpus=parse_gpus("all")), "img", 2, "j")
    assert [c["device_requests"][0]["Count"] for c in counted] == [-1, -1]
    with pytest.raises(RunError, match="cannot be shared out evenly over 2 nodes"):
        node_configs(ContainerOptions(gpus=parse_gpus("device=0,1,2")), "img", 2, "j")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ContainerOptions(detach=True), "--detach starts one container"),
        (ContainerOptions(args=("python", "x.py")), "ARGS after -- must be trainer flags"),
    ],
)
def test_refused_before_any_container(options: ContainerOptions, message: str) -> None:
    with pytest.raises(RunError, match=message):
        run_nodes(RunTarget("img"), options, 2, Console(io.BytesIO(), io.BytesIO(), silent))


def test_lines_are_prefixed_whole() -> None:
    out = io.BytesIO()
    lock = threading.Lock()
    a, b = _Prefixed(out, b"[node 0] ", lock), _Prefixed(out, b"[node 1] ", lock)  # type: ignore[arg-type]
    a.write(b"hel")
    b.write(b"one\ntw")
    a.write(b"lo\nworld")
    b.flush()
    a.flush()
    assert out.getvalue() == b"[node 1] one\n[node 0] hello\n[node 1] tw\n[node 0] world\n"
