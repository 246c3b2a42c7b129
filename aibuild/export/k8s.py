"""A multi-node training job for Kubernetes, as YAML documents.

``job`` (the default, no operator needed): an Indexed Job (``completionMode: Indexed``,
``parallelism`` = ``completions`` = nodes) whose pods are ``<job>-<index>`` under the
``subdomain`` of a headless Service of the same name, so pod 0 answers at
``<job>-0.<job>``. torchrun uses static rendezvous there: the completion index is the
node rank, and the pod of index 0 hosts the store. ``backoffLimit: 0``: one failed pod
fails the job, and the controller stops the others.

``trainjob``: a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Trainer
2.2 and later) on the ``torch-distributed`` ClusterTrainingRuntime: ``trainer`` holds the
image, torchrun's command, ``numNodes``, ``numProcPerNode``, ``resourcesPerNode`` and the
environment; the Trainer gives each node torchrun's ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` (static rendezvous at node 0),
so the command names none of them. What the ``trainer`` fields cannot say (shm, volumes,
the pod's and the container's security contexts) goes in one ``runtimePatches`` entry
(manager ``aibuild``) for the runtime's ``node`` job and container.

``pytorchjob`` (legacy: Kubeflow Trainer v2 replaced it with the TrainJob): a Kubeflow
PyTorchJob (``kubeflow.org/v1``): a Master and N-1 Workers, the container named
``pytorch``; the training operator gives each pod ``MASTER_ADDR``, ``MASTER_PORT`` (from the
container port named ``pytorchjob-port``) and ``RANK``.

All: ``nvidia.com/gpu`` limits, a memory-backed ``/dev/shm`` sized by ``run.shm_size``,
the NCCL environment, data (read-only) and output volumes, and the image's non-root user
with no privilege escalation and no capabilities. ``queue`` (``--queue``) adds Kueue's
``kueue.x-k8s.io/queue-name`` label to the workload (the Indexed Job is then created
suspended, as Kueue admits it by unsuspending it).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from aibuild import __version__
from aibuild.contract import ENV_OUTPUT, TRAIN_ENTRYPOINT
from aibuild.errors import ExportError
from aibuild.export.job import (
    DATA_DIR,
    DEFAULT_RDZV_PORT,
    IMAGE_UID,
    OUTPUT_DIR,
    ClusterJob,
    Rendezvous,
    quantity,
)
from aibuild.export.shell import comment, env_name, kube_literal

KINDS = ("job", "trainjob", "pytorchjob")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
CLAIM_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")  # a DNS subdomain
# a LocalQueue's name (a DNS subdomain) that also fits a label value (at most 63)
QUEUE_RE = re.compile(rf"^(?=.{{1,63}}$){_LABEL}(\.{_LABEL})*$")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
TRAINER_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer ships
TRAINER_NODE = "node"  # that runtime's replicated job and container
PATCH_MANAGER = "aibuild"
TRAINER_RESERVED_ENV = "PET_"  # torchrun's settings, which the Trainer sets on every node
DEFAULT_KIND = "job"
INSTANCE = "app.kubernetes.io/instance"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
OPERATOR_PORT = "pytorchjob-port"  # the port name the training operator reads


def _labels(job: ClusterJob) -> dict[str, str]:
    return {"app.kubernetes.io/name": "aibuild", INSTANCE: job.name}


def _container(
    job: ClusterJob, name: str, rdzv: Rendezvous, port_name: str, extra_env: list[dict[str, Any]]
) -> dict[str, Any]:
    # the kubelet expands $(VAR) in command, args and env values: a user's text goes in with
    # its $ doubled (the rendezvous' own $(NODE_RANK) is meant to expand)
    command = rdzv.torchrun([kube_literal(a) for a in job.trainer_args])
    env = {env_name(k): kube_literal(v) for k, v in job.environment()}
    env[ENV_OUTPUT] = OUTPUT_DIR
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if job.gpus_per_node:
        limits["nvidia.com/gpu"] = str(job.gpus_per_node)
    if job.cpus_per_node:
        requests["cpu"] = str(job.cpus_per_node)
    if job.memory_bytes:
        requests["memory"] = limits["memory"] = quantity(job.memory_bytes)
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if job.data:
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    mounts.append({"name": "output", "mountPath": OUTPUT_DIR})
    resources = {k: v for k, v in (("limits", limits), ("requests", requests)) if v}
    return {
        "name": name,
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command[:1],
        "args": command[1:],
        "env": [*extra_env, *({"name": k, "value": v} for k, v in env.items())],
        "ports": [{"name": port_name, "containerPort": _port(job), "protocol": "TCP"}],
        **({"resources": resources} if resources else {}),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def _port(job: ClusterJob) -> int:
    return job.rdzv_port or DEFAULT_RDZV_PORT


def _pod_spec(job: ClusterJob, container: dict[str, Any], **fields: Any) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(job.shm_bytes)}}
    ]
    if job.data:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": job.data, "readOnly": True}}
        )
    if job.output:
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": job.output}})
    else:
        volumes.append({"name": "output", "emptyDir": {}})
    return {
        **fields,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }


def indexed_job(job: ClusterJob) -> list[dict[str, Any]]:
    """The headless Service and the Indexed Job."""
    service = job.name
    rdzv = job.rendezvous(f"{job.name}-0.{service}", node_rank="$(NODE_RANK)")
    node_rank = {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}
    container = _container(job, "trainer", rdzv, "rendezvous", [node_rank])
    pod = _pod_spec(job, container, subdomain=service, restartPolicy="Never")
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": job.nodes,
        "parallelism": job.nodes,
        "backoffLimit": 0,
    }
    if job.time_seconds:
        spec["activeDeadlineSeconds"] = job.time_seconds
    spec["template"] = {"metadata": {"labels": _labels(job)}, "spec": pod}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "labels": _labels(job)},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,  # pods meet before they are ready
                "selector": {INSTANCE: job.name},
                "ports": [{"name": "rendezvous", "port": _port(job), "targetPort": _port(job)}],
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job.name, "labels": _labels(job)},
            "spec": spec,
        },
    ]


def pytorch_job(job: ClusterJob) -> list[dict[str, Any]]:
    """A Kubeflow PyTorchJob: Master (node rank 0) and Workers."""
    rdzv = job.rendezvous("$(MASTER_ADDR):$(MASTER_PORT)", node_rank="$(RANK)")
    container = _container(job, "pytorch", rdzv, OPERATOR_PORT, [])
    template = {"metadata": {"labels": _labels(job)}, "spec": _pod_spec(job, container)}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if job.nodes > 1:
        replicas["Worker"] = {
            "replicas": job.nodes - 1,
            "restartPolicy": "Never",
            "template": template,
        }
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": 0}
    if job.time_seconds:
        run_policy["activeDeadlineSeconds"] = job.time_seconds
    return [
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": job.name, "labels": _labels(job)},
            "spec": {"runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
        }
    ]


def train_job(job: ClusterJob) -> list[dict[str, Any]]:
    """A Kubeflow Trainer v2 TrainJob on the ``torch-distributed`` runtime."""
    if job.rdzv_port is not None:
        raise ExportError(
            "--rdzv-port does not apply to a TrainJob: Kubeflow Trainer sets the rendezvous "
            "port (PET_MASTER_PORT) itself"
        )
    reserved = [k for k, _ in job.env if k.startswith(TRAINER_RESERVED_ENV)]
    if reserved:
        raise ExportError(
            f"--env {reserved[0]}: Kubeflow Trainer reserves the {TRAINER_RESERVED_ENV}* "
            "variables for torchrun's settings and refuses a TrainJob that sets them"
        )
    # The same pod as the other kinds: its container and pod spec, split into what the
    # TrainJob's trainer says and what the runtime patch adds.
    container = _container(job, TRAINER_NODE, job.rendezvous("unused"), "unused", [])
    pod = _pod_spec(job, container)
    trainer: dict[str, Any] = {
        "image": job.image,
        "command": ["torchrun", "--tee", "3", "-m", *TRAIN_ENTRYPOINT],
        "args": list(job.trainer_args),
        "numNodes": job.nodes,
        "numProcPerNode": job.nproc_per_node,
    }
    if not trainer["args"]:
        del trainer["args"]
    if "resources" in container:
        trainer["resourcesPerNode"] = container["resources"]
    trainer["env"] = container["env"]
    node_patch = {
        "name": TRAINER_NODE,
        "template": {
            "spec": {
                "template": {
                    "metadata": {"labels": _labels(job)},
                    "spec": {
                        "securityContext": pod["securityContext"],
                        "volumes": pod["volumes"],
                        "containers": [
                            {
                                "name": TRAINER_NODE,
                                "securityContext": container["securityContext"],
                                "volumeMounts": container["volumeMounts"],
                            }
                        ],
                    },
                }
            }
        },
    }
    spec: dict[str, Any] = {
        "runtimeRef": {
            "apiGroup": TRAINER_API.split("/")[0],
            "kind": "ClusterTrainingRuntime",
            "name": TRAINER_RUNTIME,
        },
    }
    if job.time_seconds:
        spec["activeDeadlineSeconds"] = job.time_seconds
    spec["trainer"] = trainer
    spec["runtimePatches"] = [
        {
            "manager": PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_patch]}}},
        }
    ]
    return [
        {
            "apiVersion": TRAINER_API,
            "kind": "TrainJob",
            "metadata": {"name": job.name, "labels": _labels(job)},
            "spec": spec,
        }
    ]


def _queue(documents: list[dict[str, Any]], queue: str) -> list[dict[str, Any]]:
    """Kueue's label on the workload (not on the Service); a batch Job starts suspended."""
    for doc in documents:
        if doc["kind"] == "Service":
            continue
        doc["metadata"]["labels"][QUEUE_LABEL] = queue
        if doc["kind"] == "Job":
            doc["spec"]["suspend"] = True
    return documents


def k8s_documents(
    job: ClusterJob, kind: str = DEFAULT_KIND, queue: str | None = None
) -> list[dict[str, Any]]:
    if queue is not None and not QUEUE_RE.fullmatch(queue):
        raise ExportError(
            f"--queue {queue!r} is not a Kueue LocalQueue name (lower-case letters, digits, "
            "'-' and '.', at most 63 characters)"
        )
    for claim, option in ((job.data, "--data-claim"), (job.output, "--output-claim")):
        if claim is not None and not CLAIM_RE.fullmatch(claim):
            raise ExportError(
                f"{option} {claim!r} is not a PersistentVolumeClaim name (lower-case letters, "
                "digits, '-' and '.')"
            )
    if kind not in KINDS:
        raise ExportError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "pytorchjob":
        documents = pytorch_job(job)
    elif kind == "trainjob":
        documents = train_job(job)
    else:
        documents = indexed_job(job)
    return documents if queue is None else _queue(documents, queue)


def k8s_yaml(job: ClusterJob, kind: str = DEFAULT_KIND, queue: str | None = None) -> str:
    """The documents as one YAML stream (``kubectl apply -f``)."""
    needs = {
        "trainjob": "# Needs: Kubeflow Trainer 2.2 or later (runtimePatches) with its "
        "torch-distributed ClusterTrainingRuntime.\n",
        "pytorchjob": "# Needs: Kubeflow's training operator v1 (legacy; see --kind trainjob).\n",
    }.get(kind, "")
    header = (
        comment(
            f"# Written by aibuild {__version__} (aibuild export k8s --kind {kind}): profile "
            f"{job.plan.profile_name}, {job.nodes} node(s) x {job.nproc_per_node} process(es)."
        )
        + "\n"
        + f"{needs}"
        + (comment(f"# Kueue: admitted through LocalQueue {queue}.") + "\n" if queue else "")
        + "# Apply: kubectl apply -f THIS_FILE\n"
    )
    body = yaml.safe_dump_all(k8s_documents(job, kind, queue), sort_keys=False, width=100)
    return header + body
