"""A Compose file for one multi-GPU host: ``aibuild run`` as a service.

The service is written from the very container config ``aibuild run`` would use
(``aibuild.run.config.container_config``): the GPUs as a device request
(``deploy.resources.reservations.devices``, ``driver: nvidia``, ``capabilities: [gpu]``,
a ``count`` or ``device_ids``), ``shm_size`` from the profile, the memlock/stack ulimits,
the data (read-only) and output bind mounts with the caller's uid:gid, and
``torchrun --nproc-per-node N`` when there is more than one process.
"""

from __future__ import annotations

from typing import Any

import yaml

from aibuild import __version__
from aibuild.export.job import ClusterJob
from aibuild.export.shell import comment, compose_literal, env_name
from aibuild.run.config import ContainerOptions, container_config
from aibuild.run.gpus import GpuRequest

SERVICE = "train"


def _devices(request: Any) -> list[dict[str, Any]]:
    """docker-py DeviceRequests -> Compose device reservations (NVIDIA's driver named,
    as Compose wants it)."""
    devices = []
    for device in request:
        entry: dict[str, Any] = {"driver": device.get("Driver") or "nvidia"}
        if device.get("DeviceIDs"):
            entry["device_ids"] = list(device["DeviceIDs"])
        else:
            count = device.get("Count", 0)
            entry["count"] = "all" if count < 0 else count
        entry["capabilities"] = list((device.get("Capabilities") or [["gpu"]])[0])
        devices.append(entry)
    return devices


def compose_service(job: ClusterJob, memlock: bool = True) -> dict[str, Any]:
    gpus = None
    if job.gpu_devices:
        gpus = GpuRequest(device_ids=job.gpu_devices)
    elif job.gpus_per_node:
        gpus = GpuRequest(count=job.gpus_per_node)
    options = ContainerOptions(
        args=job.trainer_args,
        gpus=gpus,
        gpus_given=True,
        shm_size=job.plan.run_shm_size,
        data=job.data,
        output=job.output,
        env=tuple(job.environment(multinode=False)),
        nproc_per_node=job.nproc_per_node if job.nproc_per_node > 1 else None,
        exported="compose",  # a job, not a run: no owner for a reaper to judge
    )
    config = container_config(options, job.image)
    service: dict[str, Any] = {"image": config["image"]}
    for key in ("entrypoint", "command", "user"):
        if config.get(key) is not None:
            service[key] = config[key]
    if config["environment"]:
        service["environment"] = {env_name(k): v for k, v in config["environment"].items()}
    service["shm_size"] = config["shm_size"]
    service["ulimits"] = {
        u["Name"]: {"soft": u["Soft"], "hard": u["Hard"]}
        for u in config["ulimits"]
        if memlock or u["Name"] != "memlock"
    }
    volumes = [
        {
            "type": "bind",
            "source": mount["Source"],
            "target": mount["Target"],
            **({"read_only": True} if mount.get("ReadOnly") else {}),
        }
        for mount in config["mounts"]
    ]
    if volumes:
        service["volumes"] = volumes
    service["labels"] = dict(config["labels"])
    if config.get("device_requests"):
        devices = _devices(config["device_requests"])
        service["deploy"] = {"resources": {"reservations": {"devices": devices}}}
    return service


def _literal(value: Any) -> Any:
    """Every string with its ``$`` doubled: Compose interpolates ``${VAR}`` in all values,
    and a trainer flag or variable must reach the container as written."""
    if isinstance(value, str):
        return compose_literal(value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


MEMLOCK_NOTE = (
    "# ulimits.memlock -1 (NVIDIA's advice for pinned memory) needs an engine that can raise\n"
    "# it: where `up` fails with 'error setting rlimit', delete that line (aibuild run does).\n"
)
NO_MEMLOCK_NOTE = (
    "# No memlock ulimit: the engine here cannot raise it to unlimited (aibuild export\n"
    "# compose tried); add `memlock: -1` under ulimits on a host whose engine can.\n"
)


def compose_yaml(job: ClusterJob, memlock: bool = True) -> str:
    header = (
        comment(
            f"# Written by aibuild {__version__} (aibuild export compose): profile "
            f"{job.plan.profile_name}, {job.nproc_per_node} process(es), "
            f"{job.gpus_per_node} GPU(s)."
        )
        + "\n# Run: docker compose -f THIS_FILE up (or docker-compose)\n"
        + (MEMLOCK_NOTE if memlock else NO_MEMLOCK_NOTE)
    )
    document = {"services": {SERVICE: _literal(compose_service(job, memlock))}}
    return header + yaml.safe_dump(document, sort_keys=False, width=100)
