"""The Kubernetes objects, validated against the real API schemas (kubernetes-validate ships
them, offline) for several Kubernetes versions, and read the way the cluster reads them:
each pod's environment and ``$(VAR)`` arguments resolved as the kubelet does, then given
to torchrun's own argument parser, so that the rendezvous settings of every pod can be
compared."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aibuild.export.job import ClusterJob, cluster_job
from aibuild.export.k8s import k8s_documents, k8s_yaml
from aibuild.image.record import BuildResult, record_push, write_record
from aibuild.profile.resolve import plan_for
from tests.unit.conftest import run_cli

# the oldest and newest schemas kubernetes-validate ships, and one between
VERSIONS = ("1.25.0", "1.31.0", "1.37.0")
DIGEST = "sha256:" + "12" * 32


def gpu_job(**kwargs: Any) -> ClusterJob:
    fields: dict[str, Any] = {
        "nodes": 4,
        "image": "registry.example.com/team/train:h100",
        "cpus": 32,
        "memory": "512g",
        "time_limit": "12:00:00",
        "data": "datasets",
        "output": "runs",
    }
    fields.update(kwargs)
    return cluster_job(plan_for("gpu-h100x8"), **fields)


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents}


@pytest.mark.parametrize("version", VERSIONS)
def test_indexed_job_objects_are_valid(version: str) -> None:
    docs = yaml.safe_load_all(k8s_yaml(gpu_job()))
    kinds = []
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert kinds == ["Service", "Job"]


@pytest.mark.parametrize("version", VERSIONS)
def test_pytorchjob_pod_templates_are_valid(version: str) -> None:
    """A PyTorchJob is a custom resource: its pod templates are the core objects in it."""
    (doc,) = yaml.safe_load_all(k8s_yaml(gpu_job(), "pytorchjob"))
    assert (doc["apiVersion"], doc["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = doc["spec"]["pytorchReplicaSpecs"]
    assert sorted(replicas) == ["Master", "Worker"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    for role, spec in replicas.items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}"},
            "template": spec["template"],
        }
        kubernetes_validate.validate(pod_template, version, strict=True)
        assert [c["name"] for c in spec["template"]["spec"]["containers"]] == ["pytorch"]


def test_the_validator_can_fail() -> None:
    _, job = k8s_documents(gpu_job())
    broken = copy.deepcopy(job)
    broken["spec"]["parallelism"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8  # no such field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_pod_contents() -> None:
    _, job = k8s_documents(gpu_job())
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "limits": {"nvidia.com/gpu": "8", "memory": "512Gi"},
        "requests": {"cpu": "32", "memory": "512Gi"},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}  # run.shm_size
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "runs"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/data"]["readOnly"] is True and mounts["/output"]["name"] == "output"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["AIBUILD_DATA"] == "/data" and env["AIBUILD_OUTPUT"] == "/output"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000  # the image's USER
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert job["spec"]["activeDeadlineSeconds"] == 12 * 3600
    assert job["spec"]["backoffLimit"] == 0


def test_cpu_job_has_no_gpus_and_an_emptydir_output() -> None:
    _, job = k8s_documents(cluster_job(plan_for("cpu"), nodes=2))
    pod = job["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert {"name": "output", "emptyDir": {}} in pod["volumes"]


def test_image_is_pinned_by_the_build_record(tmp_path: Path) -> None:
    plan = plan_for("gpu-h100x8")
    ref = "registry.example.com/team/train:h100"
    result = BuildResult("sha256:" + "9" * 64, [ref], plan, tmp_path, [], 1.0)
    result.python_packages = ["torch==2.13.0"]
    path = write_record(result, {}, tmp_path)
    pinned = f"registry.example.com/team/train@{DIGEST}"
    assert record_push(path, ref=ref, digest=DIGEST, pinned=pinned, method="direct") is None
    job = cluster_job(plan, nodes=2, image=ref, record_dir=tmp_path)
    for doc in k8s_documents(job, "job")[1:] + k8s_documents(job, "pytorchjob"):
        text = yaml.safe_dump(doc)
        assert pinned in text and ":h100" not in text


# ------------------------------------------------------------------ rendezvous agreement


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (unknown variables stay as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


@dataclass
class Pod:
    hostname: str
    fqdn_prefix: str  # <hostname>.<subdomain>, what a sibling pod can resolve
    labels: dict[str, str]
    port: int
    args: Any  # torchrun's parsed arguments


def torchrun_args(container: dict[str, Any], env: dict[str, str]) -> Any:
    from torch.distributed.run import get_args_parser

    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
    argv = [expand(a, env) for a in container["command"] + container["args"]]
    assert argv[0] == "torchrun"
    return get_args_parser().parse_args(argv[1:])


def indexed_pods(documents: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Pod]]:
    """The pods an Indexed Job makes: hostname <job>-<i>, completion index annotation i."""
    service, job = by_kind(documents)["Service"], by_kind(documents)["Job"]
    template = job["spec"]["template"]
    (container,) = template["spec"]["containers"]
    pods = []
    for index in range(job["spec"]["completions"]):
        annotations = {"batch.kubernetes.io/job-completion-index": str(index)}
        env: dict[str, str] = {}
        for item in container["env"]:
            path = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
            match = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path)
            if match:
                env[item["name"]] = annotations[match[1]]
        hostname = f"{job['metadata']['name']}-{index}"
        pods.append(
            Pod(
                hostname,
                f"{hostname}.{template['spec']['subdomain']}",
                template["metadata"]["labels"],
                container["ports"][0]["containerPort"],
                torchrun_args(container, env),
            )
        )
    return service, pods


@pytest.mark.parametrize("nodes", [1, 2, 4, 12])
def test_indexed_job_pods_agree_on_the_rendezvous(nodes: int) -> None:
    documents = k8s_documents(gpu_job(nodes=nodes, rdzv_port=23456))
    job = by_kind(documents)["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == nodes
    service, pods = indexed_pods(documents)
    assert service["spec"]["clusterIP"] == "None"  # headless: pod names resolve
    assert service["metadata"]["name"] == pods[0].fqdn_prefix.split(".")[1]
    ports = {p["port"] for p in service["spec"]["ports"]}
    for pod in pods:
        assert service["spec"]["selector"].items() <= pod.labels.items()
        assert pod.port in ports
    endpoints = {p.args.rdzv_endpoint for p in pods}
    assert endpoints == {f"{pods[0].fqdn_prefix}:23456"}  # every pod meets at pod 0
    assert {(p.args.nnodes, p.args.nproc_per_node, p.args.rdzv_backend) for p in pods} == {
        (str(nodes), "8", "static")
    }
    # node ranks are the completion indexes: each once, and 0 is the pod that hosts
    assert [p.args.node_rank for p in pods] == list(range(nodes))


def test_pytorchjob_pods_agree_on_the_rendezvous() -> None:
    """The training operator's environment: MASTER_ADDR is the master's service, MASTER_PORT
    the container port named pytorchjob-port, RANK the replica's index (master 0)."""
    (doc,) = k8s_documents(gpu_job(nodes=3), "pytorchjob")
    name = doc["metadata"]["name"]
    ranks = []
    seen = set()
    rank = 0
    for role in ("Master", "Worker"):
        spec = doc["spec"]["pytorchReplicaSpecs"][role]
        (container,) = spec["template"]["spec"]["containers"]
        port = next(p for p in container["ports"] if p["name"] == "pytorchjob-port")
        for _ in range(spec["replicas"]):
            env = {
                "MASTER_ADDR": f"{name}-master-0",
                "MASTER_PORT": str(port["containerPort"]),
                "RANK": str(rank),
            }
            args = torchrun_args(container, env)
            seen.add((args.nnodes, args.rdzv_endpoint, args.rdzv_backend))
            ranks.append(args.node_rank)
            rank += 1
    assert seen == {("3", f"{name}-master-0:29500", "static")}
    assert ranks == [0, 1, 2]


def test_cli_writes_yaml() -> None:
    result = run_cli(["export", "k8s", "gpu-l4", "--nodes", "2", "--kind", "pytorchjob"])
    assert result.exit_code == 0, result.output
    (doc,) = yaml.safe_load_all(result.stdout)
    assert doc["kind"] == "PyTorchJob"
    assert "Worker" in doc["spec"]["pytorchReplicaSpecs"]


def test_bad_claim_names_are_refused() -> None:
    from aibuild.errors import ExportError

    with pytest.raises(ExportError, match="--data-claim 'My Data' is not a PersistentVolumeClaim"):
        k8s_documents(gpu_job(data="My Data"))
    with pytest.raises(ExportError, match="--output-claim"):
        k8s_documents(gpu_job(output="-runs"))
