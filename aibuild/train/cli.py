"""``aibuild train``: the image's entrypoint, and a trainer on the host.

Configuration, lowest to highest precedence: built-in defaults, the
``training:`` section of ``--config`` (default ``$AIBUILD_PROFILE``), ``--set
KEY=VALUE``, then the dedicated flags. ``--data`` defaults to ``$AIBUILD_DATA``
(then ``training.data_dir``, then the embedded data); ``--output`` to
``$AIBUILD_OUTPUT``, then ``./aibuild-output``.

torch is imported only when training starts, so ``--help`` and config errors
are fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from aibuild.errors import AibuildError, TrainError
from aibuild.kv import split_item
from aibuild.train.config import DATASETS, MODELS, PRECISIONS, shown, validate_training

PROFILE_KEYS = {
    "name",
    "description",
    "extends",
    "hardware",
    "software",
    "run",
    "image",
    "training",
}


class TrainSource:
    """The ``training:`` mapping read from a file, with each key's line and column."""

    def __init__(
        self,
        path: str | None,
        mapping: dict[str, Any],
        positions: dict[str, tuple[int, int]],
        accelerator: str | None,
    ) -> None:
        self.path = path
        self.mapping = mapping
        self.positions = positions
        self.accelerator = accelerator


def _positions(node: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(k.value): (k.start_mark.line + 1, k.start_mark.column + 1)
        for k, _ in node.value
        if isinstance(k, yaml.ScalarNode)
    }


MAX_CONFIG_BYTES = 1 << 20
"""1 MiB: the largest config file read (a profile is a few KB)."""
MAX_YAML_NODES = 100_000
"""The most YAML nodes a config may hold once its aliases are expanded: an alias
bomb ("billion laughs") is refused before anything is constructed from it."""


def _expanded_size(root: yaml.Node, where: str) -> int:
    """Nodes under ``root`` counting every alias in full; refuses cycles. Linear time:
    the size of a node shared by aliases is computed once."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children: list[yaml.Node] = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise TrainError(
                    f"{where}: error: the YAML expands to more than {MAX_YAML_NODES:,} nodes "
                    "(aliases counted in full)"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise TrainError(f"{where}: error: a YAML alias refers to itself")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _safe_load(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """(the composed node, the document) as ``yaml.safe_load`` would build it, refusing
    (TrainError) a document that expands too far before constructing anything."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _expanded_size(node, where)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def read_training_source(path: str | None) -> TrainSource:
    """Read a whole profile (its ``training:`` section) or a bare training mapping."""
    if path is None:
        return TrainSource(None, {}, {}, None)
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise TrainError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes: not a profile"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise TrainError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainError(
            f"cannot read config file {path}: {shown(str(exc), quote=False)}"
        ) from None
    try:
        node, doc = _safe_load(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise TrainError(f"{where}: error: invalid YAML: {shown(problem, quote=False)}") from None
    except RecursionError:
        raise TrainError(f"{path}: error: invalid YAML: nested too deeply") from None
    if doc is None:
        return TrainSource(path, {}, {}, None)
    if not isinstance(doc, dict):
        raise TrainError(f"{path}: error: expected a mapping (a profile or a training: section)")
    accelerator = None
    hardware = doc.get("hardware")
    if isinstance(hardware, dict) and isinstance(hardware.get("accelerator"), str):
        accelerator = hardware["accelerator"]
    if "training" in doc:
        section = doc["training"] or {}
        sub = None
        if isinstance(node, yaml.MappingNode):
            sub = next((v for k, v in node.value if getattr(k, "value", None) == "training"), None)
        if not isinstance(section, dict):
            raise TrainError(f"{path}: error: training: must be a mapping (training)")
        return TrainSource(path, section, _positions(sub), accelerator)
    if PROFILE_KEYS & set(doc):
        return TrainSource(path, {}, {}, accelerator)  # a profile without a training: section
    return TrainSource(path, doc, _positions(node), accelerator)


def _parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        try:
            key, value = split_item(
                item, option="--set", example="KEY=VALUE (e.g. --set n_layer=6)"
            )
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        assert value is not None
        key = key.removeprefix("training.")
        if not key:
            raise TrainError(f"--set {shown(item)}: expected KEY=VALUE (e.g. --set n_layer=6)")
        try:
            out[key] = _safe_load(value, f"--set {shown(key, quote=False)}")[1]
        except (yaml.YAMLError, RecursionError):
            out[key] = value
    return out


def merge_config(
    source: TrainSource, sets: dict[str, Any], flags: dict[str, Any]
) -> dict[str, Any]:
    """The training mapping after --set and flags; raises TrainError listing every problem."""
    merged = dict(source.mapping)
    merged.update(sets)
    merged.update(flags)
    problems = validate_training(merged)
    if problems:
        lines = []
        for key, message in problems:
            if key in flags:
                lines.append(f"--{key.replace('_', '-')}: error: {message}")
            elif key in sets:
                name = shown(key, quote=False)
                lines.append(f"--set {name}: error: {message} (training.{name})")
            else:
                line, col = source.positions.get(key, (0, 0))
                where = f"{source.path or '<config>'}:{line}:{col}"
                suffix = f" (training.{shown(key, quote=False)})" if key else " (training)"
                lines.append(f"{where}: error: {message}{suffix}")
        raise TrainError("\n".join(lines))
    return merged


def _env_default(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


@click.command(name="train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Profile (its training: section) or a training mapping. "
    "[default: $AIBUILD_PROFILE, else built-in defaults]",
)
@click.option(
    "--data",
    "data_dir",
    metavar="DIR",
    help="Dataset files (a .txt file for text). "
    "[default: $AIBUILD_DATA, else training.data_dir, else the embedded data]",
)
@click.option(
    "--output",
    "output_dir",
    metavar="DIR",
    help="Checkpoints, metrics.jsonl, summary.json. "
    "[default: $AIBUILD_OUTPUT, else ./aibuild-output]",
)
@click.option("--model", type=click.Choice(MODELS), help="Model architecture.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Dataset format.")
@click.option("--epochs", type=int, help="Passes over the training set.")
@click.option("--batch-size", type=int, help="Samples per micro-batch, per process.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), help="Optimizer.")
@click.option("--precision", type=click.Choice(PRECISIONS), help="auto, fp32, bf16 or fp16.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model.")
@click.option(
    "--channels-last/--no-channels-last", default=None, help="channels_last memory format (cnn)."
)
@click.option("--num-workers", type=int, help="DataLoader worker processes.")
@click.option("--seed", type=int, help="Random seed.")
@click.option(
    "--deterministic/--no-deterministic", default=None, help="Deterministic algorithms only."
)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any training key (repeatable), e.g. --set n_layer=6.",
)
@click.option(
    "--resume",
    metavar="auto|PATH",
    help="Continue from the newest checkpoint in --output (auto) or from PATH.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="One batch of training and one of evaluation, then exit; writes nothing.",
)
@click.option(
    "--selftest",
    is_flag=True,
    help="Report torch, CUDA, GPUs, NCCL and measured speed; "
    "exit 1 if the profile expects a GPU and none works.",
)
@click.pass_context
def train(
    ctx: click.Context,
    /,
    config_path: str | None,
    data_dir: str | None,
    output_dir: str | None,
    sets: tuple[str, ...],
    resume: str | None,
    dry_run: bool,
    selftest: bool,
    **flags: Any,
) -> None:
    """Train a model as the profile's training: section says (the image's entrypoint).

    Runs under torchrun for several processes: torchrun --nproc-per-node N -m aibuild train.
    Exit codes: 0 done, 1 bad config/dataset/selftest, 130/143 stopped by SIGINT/SIGTERM
    after saving a checkpoint.
    """
    try:
        code = main(config_path, data_dir, output_dir, sets, resume, dry_run, selftest, flags)
    except AibuildError as exc:
        message = exc.format()
        rank = os.environ.get("RANK", "0")
        if rank not in ("", "0"):  # under torchrun every rank reports; say which one
            message = "\n".join(f"[rank {rank}] {line}" for line in message.splitlines())
        click.echo(message, err=True)
        ctx.exit(exc.exit_code)
    ctx.exit(code)


def main(
    config_path: str | None,
    data_dir: str | None,
    output_dir: str | None,
    sets: tuple[str, ...],
    resume: str | None,
    dry_run: bool,
    selftest: bool,
    flags: dict[str, Any],
) -> int:
    """Everything ``aibuild train`` does, callable without click."""
    config_path = config_path or _env_default("AIBUILD_PROFILE")
    source = read_training_source(config_path)
    given = {k: v for k, v in flags.items() if v is not None}
    data = data_dir or _env_default("AIBUILD_DATA")
    if data:
        given["data_dir"] = data
    mapping = merge_config(source, _parse_set(sets), given)

    from aibuild.train.config import load_training_config

    cfg = load_training_config(mapping)
    if selftest:
        from aibuild.train.selftest import format_report, run_selftest

        expect_gpu = source.accelerator == "nvidia" or cfg.device.startswith("cuda")
        report = run_selftest(expect_gpu)
        click.echo(format_report(report))
        if report["problems"]:
            raise TrainError("selftest failed: " + "; ".join(report["problems"]))
        return 0

    from aibuild.train.loop import TrainOptions, run_training

    if source.accelerator == "nvidia" and cfg.device == "auto":
        import torch

        if not torch.cuda.is_available():
            click.echo(
                "warning: the profile expects an NVIDIA GPU (hardware.accelerator: nvidia) but "
                "none is usable here; training on CPU (aibuild train --selftest tells more)",
                err=True,
            )

    output = Path(output_dir or _env_default("AIBUILD_OUTPUT") or "aibuild-output")
    opts = TrainOptions(output=output, resume=resume, dry_run=dry_run, stream=sys.stdout)
    summary = run_training(cfg, opts)
    if dry_run:
        ev = summary.get("eval") or {}
        shown = f", eval loss {ev['loss']:.4f}" if "loss" in ev else ""
        click.echo(f"dry run ok: train loss {summary['train_loss']:.4f}{shown}")
    from aibuild.train.distributed import group_lingers

    if group_lingers():
        # Something still holds the destroyed process group: finalizing the interpreter
        # would destroy it there, where gloo's threads can abort the process. Every rank
        # is past the barrier and the files are closed, so end here, flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
