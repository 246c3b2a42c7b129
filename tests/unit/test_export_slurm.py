"""The sbatch script, by structure: bash parses it, its #SBATCH lines hold the resources,
and each runtime's srun line says what pyxis, Apptainer and Docker document.

pyxis and Apptainer are not installable here; their scripts are checked against the
tools' documented options (pyxis' args.c and wiki: ``--container-image=[USER@][REGISTRY#]
IMAGE[:TAG]``, ``--container-mounts=SRC:DST[:FLAGS]``, ``--no-container-entrypoint``;
``apptainer exec --nv --cleanenv --bind SRC:DST:ro --env K=V docker://IMAGE``). The Docker
runtime runs on a real Slurm in tests/integration/test_cluster.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from aibuild.errors import ExportError
from aibuild.export.job import ClusterJob, cluster_job
from aibuild.export.slurm import SlurmOptions, enroot_image, slurm_script
from aibuild.profile.resolve import plan_for

DIGEST = "sha256:" + "ef" * 32


def gpu_job(**kwargs: object) -> ClusterJob:
    fields: dict[str, object] = {
        "nodes": 4,
        "image": f"registry.example.com:5000/team/train@{DIGEST}",
        "time_limit": "1-00:00:00",
        "memory": "512g",
        "cpus": 32,
        "data": "/shared/data",
        "output": "/shared/out",
        "env": (("WANDB_MODE", "offline"),),
        "trainer_args": ("--epochs", "3"),
    }
    fields.update(kwargs)
    return cluster_job(plan_for("gpu-h100x8"), **fields)  # type: ignore[arg-type]


def bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def directives(script: str) -> dict[str, str]:
    found = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            found[key] = value
    return found


# the docker runtime's node script: one single-quoted word (no heredoc)
NODE_SCRIPT = re.compile(r"^node_script=('(?:[^']|'\"'\"')*')$", re.M)


def commands(script: str) -> list[list[str]]:
    """Each command of the script as shell words (continuation lines joined; variables
    left as written)."""
    joined = NODE_SCRIPT.sub("node_script=NODE_SCRIPT", script).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line and not line.startswith("#")]


def exported(script: str) -> dict[str, str]:
    """The variables the script exports, as the shell reads them."""
    return dict(w[1].split("=", 1) for w in commands(script) if w[:1] == ["export"])


def srun_words(script: str) -> list[str]:
    found = [words for words in commands(script) if words and words[0] == "srun"]
    assert len(found) == 1, found
    return found[0]


def test_resources(tmp_path: Path) -> None:
    script = slurm_script(gpu_job(), SlurmOptions(partition="gpu", account="ml"))
    bash_syntax_ok(script, tmp_path)
    assert directives(script) == {
        "job-name": "aibuild-gpu-h100x8",
        "nodes": "4",
        "ntasks-per-node": "1",
        "cpus-per-task": "32",
        "gpus-per-node": "8",
        "mem": "512G",
        "time": "1-00:00:00",
        "partition": "gpu",
        "account": "ml",
    }
    # the rendezvous comes from Slurm: the first host of the allocation and the job id
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in script
    assert "export RDZV_PORT=$((29500 + SLURM_JOB_ID % 1000))" in script


def test_pyxis(tmp_path: Path) -> None:
    script = slurm_script(gpu_job(), SlurmOptions(runtime="pyxis"))
    bash_syntax_ok(script, tmp_path)
    words = srun_words(script)
    assert words[:6] == [
        "srun",
        "--label",
        "--kill-on-bad-exit=1",
        "--nodes=4",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
    ]
    assert f"--container-image=registry.example.com:5000#team/train@{DIGEST}" in words
    assert "--container-mounts=/shared/data:/data:ro,/shared/out:/output" in words
    assert "--no-container-entrypoint" in words and "--container-workdir=/workspace" in words
    torchrun = words[words.index("torchrun") :]
    assert torchrun[torchrun.index("--rdzv-endpoint") + 1] == "$RDZV_HOST:$RDZV_PORT"
    assert torchrun[torchrun.index("--rdzv-id") + 1] == "$SLURM_JOB_ID"
    assert torchrun[-4:] == ["aibuild", "train", "--epochs", "3"]
    # pyxis passes the job's environment into the container: the script exports it
    exports = exported(script)
    assert exports["WANDB_MODE"] == "offline"
    assert exports["AIBUILD_DATA"] == "/data" and exports["AIBUILD_OUTPUT"] == "/output"
    assert exports["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


@pytest.mark.parametrize("binary", ["apptainer", "singularity"])
def test_apptainer(tmp_path: Path, binary: str) -> None:
    script = slurm_script(gpu_job(), SlurmOptions(runtime=binary))
    bash_syntax_ok(script, tmp_path)
    words = srun_words(script)
    runtime = words[words.index(binary) :]
    assert runtime[:3] == [binary, "exec", "--nv"]
    assert "--cleanenv" in runtime
    assert runtime[runtime.index("--bind") + 1] == "/shared/data:/data:ro,/shared/out:/output"
    image = runtime.index(f"docker://registry.example.com:5000/team/train@{DIGEST}")
    assert runtime[image + 1] == "torchrun"
    # the variables pass --cleanenv as APPTAINERENV_* (SINGULARITYENV_*)
    prefix = binary.upper() + "ENV_"
    exports = exported(script)
    assert exports[prefix + "WANDB_MODE"] == "offline"
    assert exports[prefix + "AIBUILD_OUTPUT"] == "/output"


def apptainer_sees(exported: str, tmp_path: Path) -> str:
    """What the container gets for a variable the batch shell exported as APPTAINERENV_K:
    Apptainer's own injection (process_linux.go, injectEnvHandler): ``export K="V"`` with
    only ``"`` escaped, sourced by its shell."""
    snippet = tmp_path / "inject.sh"
    snippet.write_text('export K="' + exported.replace('"', '\\"') + '"\nprintf %s "$K"\n')
    return subprocess.run(["bash", str(snippet)], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    "value", ["[rank${rank}]: ", "a b", "$HOME", "`id`", "\\", 'x"y', "it's", "a,b"]
)
def test_apptainer_gets_variables_as_written(value: str, tmp_path: Path) -> None:
    job = cluster_job(plan_for("cpu"), nodes=2, env=(("K", value),))
    script = slurm_script(job, SlurmOptions(runtime="apptainer"))
    exports = exported(script)
    assert apptainer_sees(exports["APPTAINERENV_K"], tmp_path) == value


def test_apptainer_without_gpus_has_no_nv(tmp_path: Path) -> None:
    script = slurm_script(cluster_job(plan_for("cpu"), nodes=2), SlurmOptions(runtime="apptainer"))
    assert "--nv" not in srun_words(script)
    assert "gpus-per-node" not in directives(script)


def node_script(script: str) -> str:
    """The docker runtime's node script: one single-quoted word assigned to node_script
    (no heredoc), read back as the shell reads it."""
    match = NODE_SCRIPT.search(script)
    assert match, script
    (text,) = shlex.split(match.group(1))
    return text


def test_docker(tmp_path: Path) -> None:
    script = slurm_script(gpu_job(), SlurmOptions(runtime="docker"))
    bash_syntax_ok(script, tmp_path)
    assert srun_words(script)[-3:] == ["bash", "-c", "$node_script"]
    node = node_script(script)
    bash_syntax_ok(node, tmp_path)
    run = next(w for w in commands(node) if w[:3] == ["exec", "docker", "run"])
    # scancel must not leave the container: --init --rm, named per job and node
    assert run[3:7] == ["--init", "--rm", "--name", "aibuild-$SLURM_JOB_ID-$SLURM_NODEID"]
    assert run[run.index("--network") + 1] == "host"
    assert run[run.index("--shm-size") + 1] == "64g"
    assert "--ulimit=stack=67108864:67108864" in run and "${memlock[@]}" in run
    assert "${gpus[@]}" in run
    assert "/shared/data:/data:ro" in run and "/shared/out:/output" in run
    assert run[run.index("--user") + 1] == "$(id -u):$(id -g)"
    image = run.index("--entrypoint")
    assert run[image + 1 : image + 3] == [
        "torchrun",
        f"registry.example.com:5000/team/train@{DIGEST}",
    ]
    # the GPUs Slurm gave the step
    assert 'gpus=(--gpus "\\"device=$ids\\"")' in node
    assert "gpus=(--gpus 8)" in node


def test_values_are_quoted(tmp_path: Path) -> None:
    """A hostile value stays one word in every runtime."""
    hostile = "a b'c\"$(touch /tmp/x)`id`"
    job = gpu_job(env=(("NOTE", hostile),), trainer_args=("--set", "x=$(y)"))
    for runtime in ("pyxis", "apptainer", "docker"):
        script = slurm_script(job, SlurmOptions(runtime=runtime))
        bash_syntax_ok(script, tmp_path)
        text = node_script(script) if runtime == "docker" else script
        words = [w for cmd in commands(text) for w in cmd]
        assert "x=$(y)" in words
        if runtime == "apptainer":
            exports = exported(script)
            assert apptainer_sees(exports["APPTAINERENV_NOTE"], tmp_path) == hostile
        else:
            assert any(w.endswith(hostile) for w in words), runtime


def test_bad_names_and_paths() -> None:
    with pytest.raises(ExportError, match="not a Slurm partition"):
        slurm_script(gpu_job(), SlurmOptions(partition="gpu\n#SBATCH --x"))
    with pytest.raises(ExportError, match="cannot be mounted"):
        slurm_script(gpu_job(data="/a:b"), SlurmOptions(runtime="pyxis"))
    with pytest.raises(ExportError, match="unknown Slurm runtime"):
        slurm_script(gpu_job(), SlurmOptions(runtime="podman"))


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io#nvidia/pytorch:24.05-py3"),
        ("ubuntu", "ubuntu:latest"),
        ("team/train:1", "team/train:1"),
        ("localhost:5000/x:1", "localhost:5000#x:1"),
        (f"ghcr.io/a/b:1@{DIGEST}", f"ghcr.io#a/b@{DIGEST}"),
    ],
)
def test_enroot_image(ref: str, expected: str) -> None:
    assert enroot_image(ref) == expected
