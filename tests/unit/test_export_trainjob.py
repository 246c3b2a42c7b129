"""The Kubeflow Trainer v2 TrainJob and Kueue's queue label, checked against the real schemas.

The TrainJob is read by Kubeflow Trainer's own API models (the ``kubeflow-trainer-api``
package, generated from the Trainer's OpenAPI spec, pinned in the dev extra): every
document must parse, and parse back to exactly what was written, so that a field the
Trainer does not know (which its models drop) or a wrong type fails. The CRD's CEL rules
that the models do not carry (the name, ``numProcPerNode >= 1``) are checked here too.

The pod the Trainer would make is then built the way the Trainer builds it: the TrainJob's
``trainer`` and ``runtimePatches`` applied to a runtime shaped like the
``torch-distributed`` ClusterTrainingRuntime (replicated job and container ``node``),
plus the ``PET_*`` variables its Torch plugin sets, and that pod is validated with
kubernetes-validate's core API schemas and handed to torchrun's argument parser, so that
the nodes' rendezvous settings can be compared.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from click.testing import CliRunner
from kubeflow_trainer_api.models.trainer_v1alpha1_cluster_training_runtime import (
    TrainerV1alpha1ClusterTrainingRuntime,
)
from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

from aibuild.cli import cli
from aibuild.errors import ExportError
from aibuild.export.job import ClusterJob, cluster_job
from aibuild.export.k8s import QUEUE_LABEL, k8s_documents, k8s_yaml
from aibuild.image.record import BuildResult, record_push, write_record
from aibuild.profile.resolve import plan_for

VERSIONS = ("1.25.0", "1.31.0", "1.37.0")  # as test_export_k8s: oldest, middle, newest
DIGEST = "sha256:" + "34" * 32
TRAINER_PORT = 29500  # the Trainer's ContainerTrainerPort, which it gives as PET_MASTER_PORT
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def gpu_job(**kwargs: Any) -> ClusterJob:
    fields: dict[str, Any] = {
        "nodes": 4,
        "image": "registry.example.com/team/train:h100",
        "cpus": 32,
        "memory": "512g",
        "time_limit": "12:00:00",
        "data": "datasets",
        "output": "runs",
        "trainer_args": ("--epochs", "3", "--lr", "3e-4"),
    }
    fields.update(kwargs)
    return cluster_job(plan_for("gpu-h100x8"), **fields)


def trainjob(job: ClusterJob, queue: str | None = None) -> dict[str, Any]:
    (doc,) = yaml.safe_load_all(k8s_yaml(job, "trainjob", queue))
    return dict(doc)


def trainer_api_round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's model of ``doc`` written back out; raises for a wrong type."""
    model = TrainerV1alpha1TrainJob.from_dict(doc)
    assert model is not None
    return model.to_dict()


def check_crd_rules(doc: dict[str, Any]) -> None:
    """The TrainJob CRD's CEL rules that the API models do not carry."""
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert doc["spec"]["trainer"]["numProcPerNode"] >= 1
    assert doc["spec"]["trainer"]["numNodes"] >= 0
    managers = [p["manager"] for p in doc["spec"].get("runtimePatches", [])]
    assert all(1 <= len(m) <= 253 for m in managers) and len(set(managers)) == len(managers)
    # the Torch plugin refuses a TrainJob that sets torchrun's reserved variables
    assert not [e for e in doc["spec"]["trainer"]["env"] if e["name"].startswith("PET_")]


@pytest.mark.parametrize(
    "job",
    [
        pytest.param(lambda: gpu_job(), id="gpu-4-nodes"),
        pytest.param(lambda: cluster_job(plan_for("cpu"), nodes=2), id="cpu-2-nodes"),
        pytest.param(lambda: cluster_job(plan_for("gpu-l4"), nodes=1), id="gpu-l4-1-node"),
    ],
)
@pytest.mark.parametrize("queue", [None, "team-a"])
def test_trainjob_is_what_the_trainer_api_reads(job: Any, queue: str | None) -> None:
    doc = trainjob(job(), queue)
    assert (doc["apiVersion"], doc["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert trainer_api_round_trip(doc) == doc  # nothing dropped, nothing changed
    check_crd_rules(doc)


def test_the_trainer_api_check_can_fail() -> None:
    doc = trainjob(gpu_job())
    unknown = copy.deepcopy(doc)
    unknown["spec"]["trainer"]["gpus"] = 8  # no such field: the model drops it
    assert trainer_api_round_trip(unknown) != unknown
    misplaced = copy.deepcopy(doc)  # env belongs to the trainer, not to the node patch
    node = misplaced["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    node["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["env"] = []
    assert trainer_api_round_trip(misplaced) != misplaced
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["trainer"]["numNodes"] = "4"
    with pytest.raises(pydantic.ValidationError):
        trainer_api_round_trip(wrong_type)


def test_trainjob_contents() -> None:
    doc = trainjob(gpu_job())
    spec = doc["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    assert spec["activeDeadlineSeconds"] == 12 * 3600
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.example.com/team/train:h100"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["command"] == ["torchrun", "--tee", "3", "-m", "aibuild", "train"]
    assert trainer["args"] == ["--epochs", "3", "--lr", "3e-4"]
    assert trainer["resourcesPerNode"] == {
        "limits": {"nvidia.com/gpu": "8", "memory": "512Gi"},
        "requests": {"cpu": "32", "memory": "512Gi"},
    }
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["AIBUILD_DATA"] == "/data" and env["AIBUILD_OUTPUT"] == "/output"
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "aibuild"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    pod = node["template"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "runs"}
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"]
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm", "/data", "/output"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_trainjob_image_is_pinned_by_the_build_record(tmp_path: Path) -> None:
    plan = plan_for("gpu-h100x8")
    ref = "registry.example.com/team/train:h100"
    result = BuildResult("sha256:" + "9" * 64, [ref], plan, tmp_path, [], 1.0)
    result.python_packages = ["torch==2.13.0"]
    path = write_record(result, {}, tmp_path)
    pinned = f"registry.example.com/team/train@{DIGEST}"
    assert record_push(path, ref=ref, digest=DIGEST, pinned=pinned, method="direct") is None
    doc = trainjob(cluster_job(plan, nodes=2, image=ref, record_dir=tmp_path))
    assert doc["spec"]["trainer"]["image"] == pinned
    assert ":h100" not in json.dumps(doc)


def test_trainjob_refuses_what_the_trainer_sets() -> None:
    with pytest.raises(ExportError, match="--rdzv-port does not apply to a TrainJob"):
        k8s_documents(gpu_job(rdzv_port=23456), "trainjob")
    with pytest.raises(ExportError, match="--env PET_NNODES: Kubeflow Trainer reserves"):
        k8s_documents(gpu_job(env=[("PET_NNODES", "2")]), "trainjob")


# ------------------------------------------------------------------ the pod the Trainer makes


def torch_distributed_runtime() -> dict[str, Any]:
    """A ClusterTrainingRuntime shaped like Kubeflow Trainer 2.3's ``torch-distributed``: a
    torch ML policy and one replicated job ``node`` whose container is ``node``."""
    runtime = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {
            "name": "torch-distributed",
            "labels": {"trainer.kubeflow.org/framework": "torch"},
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {
                                    "labels": {
                                        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
                                    }
                                },
                                "spec": {
                                    "template": {
                                        "spec": {
                                            "containers": [
                                                {"name": "node", "image": "pytorch/pytorch:latest"}
                                            ]
                                        }
                                    }
                                },
                            },
                        }
                    ]
                }
            },
        },
    }
    model = TrainerV1alpha1ClusterTrainingRuntime.from_dict(runtime)
    assert model is not None and model.to_dict() == runtime  # the runtime is a real one
    return runtime


def trainer_pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The PodTemplates of the TrainJob's nodes: the runtime, then the trainer's fields and
    the runtime patch, then the Torch plugin's PET_* variables (with the completion index
    that the Job gives each pod, resolved)."""
    name, spec = doc["metadata"]["name"], doc["spec"]
    (job,) = torch_distributed_runtime()["spec"]["template"]["spec"]["replicatedJobs"]
    template = job["template"]["spec"]["template"]
    trainer = spec["trainer"]
    (container,) = template["spec"]["containers"]
    container.update(image=trainer["image"], command=trainer["command"], env=trainer["env"])
    if "args" in trainer:
        container["args"] = trainer["args"]
    if "resourcesPerNode" in trainer:
        container["resources"] = trainer["resourcesPerNode"]
    for patch in spec["runtimePatches"]:
        for replicated in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            assert replicated["name"] == job["name"]
            patch_template = replicated["template"]["spec"]["template"]
            template.setdefault("metadata", {}).setdefault("labels", {}).update(
                patch_template["metadata"]["labels"]
            )
            pod_patch = dict(patch_template["spec"])
            for container_patch in pod_patch.pop("containers", []):
                assert container_patch["name"] == container["name"]
                container.update({k: v for k, v in container_patch.items() if k != "name"})
            template["spec"].update(pod_patch)
    container["ports"] = [{"containerPort": TRAINER_PORT}]
    pods = []
    for index in range(trainer["numNodes"]):
        pod = copy.deepcopy(template)
        (node,) = pod["spec"]["containers"]
        node["env"] = [
            *node["env"],
            {"name": "PET_NNODES", "value": str(trainer["numNodes"])},
            {"name": "PET_NPROC_PER_NODE", "value": str(trainer["numProcPerNode"])},
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
        ]
        pod.setdefault("metadata", {}).setdefault("annotations", {})[
            "batch.kubernetes.io/job-completion-index"
        ] = str(index)
        pods.append(pod)
    return pods


@pytest.mark.parametrize("version", VERSIONS)
def test_the_trainers_pod_is_a_valid_pod(version: str) -> None:
    for pod in trainer_pods(trainjob(gpu_job()))[:1]:
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "aibuild-gpu-h100x8-node"},
            "template": pod,
        }
        kubernetes_validate.validate(pod_template, version, strict=True)
        volumes = {v["name"] for v in pod["spec"]["volumes"]}
        (container,) = pod["spec"]["containers"]
        assert {m["name"] for m in container["volumeMounts"]} <= volumes


def torchrun_args(pod: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """torchrun's own parser over the pod's command, with the pod's environment (torchrun
    reads PET_<OPTION> as the default of --<option>)."""
    from torch.distributed.run import get_args_parser

    (container,) = pod["spec"]["containers"]
    annotations = pod["metadata"]["annotations"]
    with monkeypatch.context() as m:
        for item in container["env"]:
            if "value" in item:
                m.setenv(item["name"], item["value"])
            else:
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path)
                assert key, path
                m.setenv(item["name"], annotations[key[1]])
        argv = container["command"] + container.get("args", [])
        assert argv[0] == "torchrun"
        return get_args_parser().parse_args(argv[1:])


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_trainjob_nodes_agree_on_the_rendezvous(
    nodes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = trainjob(gpu_job(nodes=nodes))
    args = [torchrun_args(pod, monkeypatch) for pod in trainer_pods(doc)]
    name = doc["metadata"]["name"]
    assert {(a.nnodes, a.nproc_per_node, a.rdzv_backend) for a in args} == {
        (str(nodes), "8", "static")
    }
    # node 0's pod, through the JobSet's headless Service, hosts the store
    assert {(a.master_addr, a.master_port) for a in args} == {
        (f"{name}-node-0-0.{name}", TRAINER_PORT)
    }
    assert [a.node_rank for a in args] == list(range(nodes))
    assert {(a.module, tuple(a.training_script_args)) for a in args} == {
        (True, ("train", "--epochs", "3", "--lr", "3e-4"))
    }


# ------------------------------------------------------------------ Kueue


@pytest.mark.parametrize("kind", ["job", "trainjob", "pytorchjob"])
def test_queue_labels_the_workload(kind: str) -> None:
    documents = k8s_documents(gpu_job(), kind, queue="team-a.gpus")
    for doc in documents:
        labels = doc["metadata"]["labels"]
        if doc["kind"] == "Service":
            assert QUEUE_LABEL not in labels
        else:
            assert labels[QUEUE_LABEL] == "team-a.gpus"
    if kind == "job":
        assert {d["kind"]: d for d in documents}["Job"]["spec"]["suspend"] is True
    for doc in k8s_documents(gpu_job(), kind):  # without --queue: no label, not suspended
        assert QUEUE_LABEL not in doc["metadata"]["labels"]
        assert "suspend" not in doc["spec"]


@pytest.mark.parametrize("version", VERSIONS)
def test_queued_indexed_job_is_valid(version: str) -> None:
    for doc in yaml.safe_load_all(k8s_yaml(gpu_job(), "job", "team-a")):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "queue", ["Team-A", "team_a", "team/a", "-team", "a" * 64, "", "team a", "team-a\n"]
)
def test_bad_queue_names_are_refused(queue: str) -> None:
    with pytest.raises(ExportError, match="is not a Kueue LocalQueue name"):
        k8s_documents(gpu_job(), "trainjob", queue=queue)


def test_a_claim_name_with_a_newline_is_refused() -> None:
    with pytest.raises(ExportError, match=r"--data-claim 'datasets\\n' is not a Persistent"):
        k8s_documents(gpu_job(data="datasets\n"), "trainjob")


def test_cli_trainjob_with_queue() -> None:
    result = CliRunner().invoke(
        cli,
        ["export", "k8s", "gpu-l4", "--nodes", "2", "--kind", "trainjob", "--queue", "research"],
    )
    assert result.exit_code == 0, result.output
    (doc,) = yaml.safe_load_all(result.stdout)
    assert doc["kind"] == "TrainJob" and doc["metadata"]["labels"][QUEUE_LABEL] == "research"
    assert doc["spec"]["trainer"]["numNodes"] == 2
    bad = CliRunner().invoke(cli, ["export", "k8s", "gpu-l4", "--kind", "trainjob", "--queue", "A"])
    assert bad.exit_code == 1
    assert "--queue 'A' is not a Kueue LocalQueue name" in bad.output
    assert "Traceback" not in bad.output
