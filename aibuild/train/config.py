"""The profile's ``training:`` section as a typed, documented dataclass.

This module must not import torch: the profile validator imports it on hosts
that only build images. It holds the one list of training keys
(:data:`TRAINING_FIELDS`, which the README's profile reference is generated
from), :func:`validate_training` (every problem at once, as
``(key, message)`` pairs) and :func:`load_training_config` (validated mapping
-> :class:`TrainConfig`).

The section is flat: every key is a scalar, except ``synthetic_shape`` (a list
of ints). YAML quirk: PyYAML reads ``1e-3`` (no dot) as a string, so float keys
also accept strings that parse as floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, cast

from aibuild.errors import MAX_SHOWN_CHARS as MAX_SHOWN_CHARS  # the trainer's name for it
from aibuild.errors import did_you_mean
from aibuild.errors import shown as shown  # the trainer's modules import it from here

MODELS = ("cnn", "mlp", "rnn", "lstm", "transformer")
DATASETS = ("auto", "mnist", "cifar10", "imagefolder", "text", "synthetic")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
DEVICES_HELP = "auto | cpu | cuda | cuda:N"


def _f(
    default: Any, doc: str, *, choices: tuple[str, ...] = (), minimum: float | None = None
) -> Any:
    """A dataclass field carrying its one-line doc, allowed choices and minimum."""
    meta = {"doc": doc, "choices": choices, "minimum": minimum}
    if isinstance(default, list):
        value = list(default)
        return field(default_factory=lambda: list(value), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every ``training:`` key with its default. Flags of ``aibuild train`` override them."""

    # what to train on what
    model: str = _f("cnn", "model architecture", choices=MODELS)
    dataset: str = _f(
        "auto",
        "dataset format; auto = the embedded data (digits images, or Macbeth text for transformer)",
        choices=DATASETS,
    )
    data_dir: str | None = _f(
        None,
        "where the dataset's files are (a directory, or a .txt file for text); --data and "
        "$AIBUILD_DATA override it; null = the embedded data",
    )
    # optimisation
    epochs: int = _f(10, "passes over the training set", minimum=1)
    max_steps: int | None = _f(
        None,
        "stop after this many optimizer steps (the LR schedule still spans `epochs`)",
        minimum=1,
    )
    batch_size: int = _f(64, "samples per micro-batch, per process", minimum=1)
    grad_accum_steps: int = _f(1, "micro-batches accumulated per optimizer step", minimum=1)
    lr: float = _f(0.001, "peak learning rate", minimum=0.0)
    min_lr: float = _f(0.0, "learning rate at the end of the cosine decay", minimum=0.0)
    lr_schedule: str = _f("cosine", "cosine (after warmup) or constant", choices=LR_SCHEDULES)
    warmup_steps: int = _f(0, "linear warmup up to lr over this many optimizer steps", minimum=0)
    optimizer: str = _f("adamw", "adamw, or sgd with momentum", choices=OPTIMIZERS)
    momentum: float = _f(0.9, "SGD momentum", minimum=0.0)
    weight_decay: float = _f(0.01, "decoupled (AdamW) or L2 (SGD) weight decay", minimum=0.0)
    clip_grad_norm: float = _f(0.0, "clip the global gradient norm to this; 0 = off", minimum=0.0)
    # hardware and speed
    device: str = _f("auto", f"where to train: {DEVICES_HELP} (auto = CUDA when available)")
    precision: str = _f(
        "auto",
        "auto = bf16 on CUDA when supported, else fp32; fp16 uses a GradScaler",
        choices=PRECISIONS,
    )
    compile: bool = _f(False, "torch.compile the model")
    channels_last: bool = _f(False, "channels_last memory format for conv nets (cnn)")
    num_workers: int = _f(0, "DataLoader worker processes (persistent when > 0)", minimum=0)
    cpu_threads: int = _f(
        0,
        "intra-op CPU threads; 0 = auto (1 for models under 1M parameters, whose ops are "
        "too small to split, else torch's default)",
        minimum=0,
    )
    pin_memory: bool = _f(True, "pin host memory for faster copies to CUDA (ignored on CPU)")
    # reproducibility
    seed: int = _f(1337, "seed for model init, data order and dropout")
    deterministic: bool = _f(False, "deterministic algorithms only (bit-exact reruns, slower)")
    # checkpoints, evaluation, logging
    checkpoint_every: int = _f(
        0, "also checkpoint every N optimizer steps; 0 = at epoch ends only", minimum=0
    )
    keep_checkpoints: int = _f(3, "keep the newest K checkpoints", minimum=1)
    eval: bool = _f(True, "evaluate on the held-out split after each epoch")
    eval_fraction: float = _f(
        0.1, "held-out share for text, and imagefolder without a val/ folder", minimum=0.0
    )
    log_every: int = _f(10, "log a metrics line every N optimizer steps", minimum=1)
    # model sizes
    hidden_size: int = _f(128, "hidden width of mlp, rnn and lstm", minimum=1)
    num_layers: int = _f(1, "stacked layers of rnn and lstm", minimum=1)
    dropout: float = _f(0.0, "dropout of mlp, rnn, lstm and transformer (cnn: fixed)", minimum=0.0)
    n_layer: int = _f(4, "transformer blocks", minimum=1)
    n_head: int = _f(4, "transformer attention heads", minimum=1)
    n_embd: int = _f(128, "transformer width (a multiple of n_head)", minimum=1)
    block_size: int = _f(
        64, "context length in tokens (transformer, and rnn/lstm on text)", minimum=2
    )
    sample_tokens: int = _f(
        200, "tokens a language model samples after training; 0 = none", minimum=0
    )
    # synthetic data (benchmarks)
    synthetic_shape: list[int] = _f([3, 32, 32], "synthetic sample shape [C, H, W]")  # noqa: RUF009
    synthetic_samples: int = _f(2048, "synthetic training samples", minimum=1)
    synthetic_classes: int = _f(
        10, "synthetic classes (or vocabulary for sequence models)", minimum=2
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FieldSpec:
    """One ``training:`` key as documented: name, type, default and one-line doc."""

    name: str
    type: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def _specs() -> tuple[FieldSpec, ...]:
    out = []
    for f in fields(TrainConfig):
        default = (
            f.default if f.default is not MISSING else cast(Callable[[], Any], f.default_factory)()
        )
        out.append(
            FieldSpec(
                name=f.name,
                type=_type_name(f.type),
                default=default,
                doc=f.metadata["doc"],
                choices=f.metadata["choices"],
                minimum=f.metadata["minimum"],
            )
        )
    return tuple(out)


TRAINING_FIELDS: tuple[FieldSpec, ...] = _specs()
_BY_NAME = {spec.name: spec for spec in TRAINING_FIELDS}


def _coerce(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """(value converted to the key's type, error message or None)."""
    kind = spec.type.replace(" | None", "")
    optional = "None" in spec.type
    if value is None:
        return (None, None) if optional else (None, f"must be a {kind}, not null")
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"must be true or false, not {shown(value)}"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be an integer, not {shown(value)}"
        return value, None
    if kind == "float":
        if isinstance(value, bool):
            return None, f"must be a number, not {shown(value)}"
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None, f"must be a number, not {shown(value)}"
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"must be a finite number, not {shown(value)}"
        return float(value), None
    if kind == "str":
        if not isinstance(value, str):
            return None, f"must be a string, not {shown(value)}"
        return value, None
    if kind == "list[int]":
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            return None, f"must be a list of positive integers, not {shown(value)}"
        return list(value), None
    raise AssertionError(f"unhandled field type {spec.type}")  # pragma: no cover


def _check_value(spec: FieldSpec, value: Any) -> str | None:
    if value is None:
        return None
    if spec.choices and value not in spec.choices:
        did = did_you_mean(value, spec.choices)
        return f"must be one of {', '.join(spec.choices)}, not {shown(value)}{did}"
    if spec.minimum is not None and isinstance(value, (int, float)) and value < spec.minimum:
        return f"must be >= {spec.minimum:g}, not {shown(value)}"
    return None


def validate_training(mapping: Mapping[str, Any] | Any) -> list[tuple[str, str]]:
    """Every problem in a ``training:`` mapping as ``(key, message)``; [] when valid.

    Unknown keys get a did-you-mean hint; wrong types and out-of-range values are
    reported per key; cross-key rules (e.g. ``n_embd`` a multiple of ``n_head``)
    are reported on the key that has to change.
    """
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        return [("", f"the training section must be a mapping, not {type(mapping).__name__}")]
    problems: list[tuple[str, str]] = []
    good: dict[str, Any] = {}
    for key, value in mapping.items():
        spec = _BY_NAME.get(str(key))
        if spec is None:
            did = did_you_mean(key, list(_BY_NAME))
            problems.append((str(key), f"unknown training key {shown(str(key))}{did}"))
            continue
        coerced, error = _coerce(spec, value)
        if error is None:
            error = _check_value(spec, coerced)
        if error is not None:
            problems.append((spec.name, error))
        else:
            good[spec.name] = coerced
    device = good.get("device")
    if isinstance(device, str) and not _valid_device(device):
        problems.append(("device", f"must be {DEVICES_HELP}, not {shown(device)}"))
    shape = good.get("synthetic_shape")
    if shape is not None and len(shape) not in (1, 3):
        problems.append(("synthetic_shape", f"must be [C, H, W] (or [F]), not {shown(shape)}"))
    n_embd = good.get("n_embd", _BY_NAME["n_embd"].default)
    n_head = good.get("n_head", _BY_NAME["n_head"].default)
    if n_embd % n_head:
        key = "n_embd" if "n_embd" in good else "n_head"
        problems.append((key, f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})"))
    frac = good.get("eval_fraction")
    if frac is not None and frac >= 1.0:
        problems.append(("eval_fraction", f"must be below 1, not {shown(frac)}"))
    return problems


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def load_training_config(mapping: Mapping[str, Any] | None) -> TrainConfig:
    """A validated :class:`TrainConfig`; raises ValueError listing every problem."""
    problems = validate_training(mapping or {})
    if problems:
        lines = [
            f"{msg} (training.{shown(key, quote=False)})" if key else msg for key, msg in problems
        ]
        raise ValueError("\n".join(lines))
    values: dict[str, Any] = {}
    for key, value in (mapping or {}).items():
        values[key] = _coerce(_BY_NAME[key], value)[0]
    return TrainConfig(**values)
