"""The training: section: validation, documentation, and how the CLI reports problems."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from aibuild.train.config import (
    TRAINING_FIELDS,
    TrainConfig,
    load_training_config,
    validate_training,
)


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, aibuild.train.config, aibuild.train.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_required_keys_and_defaults() -> None:
    fields = {f.name: f for f in TRAINING_FIELDS}
    expected = {"model": "cnn", "batch_size": 64, "lr": 0.001, "precision": "auto", "epochs": 10}
    for key, default in expected.items():
        assert fields[key].default == default
    assert set(fields["model"].choices) == {"cnn", "mlp", "rnn", "lstm", "transformer"}
    assert set(fields["precision"].choices) == {"auto", "fp32", "bf16", "fp16"}
    for key in (
        "dataset",
        "optimizer",
        "weight_decay",
        "warmup_steps",
        "grad_accum_steps",
        "clip_grad_norm",
        "compile",
        "channels_last",
        "num_workers",
        "seed",
        "deterministic",
        "checkpoint_every",
        "keep_checkpoints",
        "eval",
    ):
        assert key in fields
    for f in TRAINING_FIELDS:
        assert f.doc and "\n" not in f.doc, f.name
        assert f.type
    # every documented key is a real config attribute with the same default
    cfg = TrainConfig()
    for f in TRAINING_FIELDS:
        assert getattr(cfg, f.name) == f.default


def test_valid_mapping_has_no_problems() -> None:
    assert validate_training({}) == []
    assert validate_training(None) == []
    good = {
        "model": "transformer",
        "lr": "3e-4",
        "epochs": 2,
        "n_embd": 64,
        "n_head": 4,
        "device": "cuda:1",
        "synthetic_shape": [1, 28, 28],
        "max_steps": None,
    }
    assert validate_training(good) == []
    cfg = load_training_config(good)
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.device == "cuda:1"


def test_every_problem_is_reported_with_its_key() -> None:
    problems = dict(
        validate_training(
            {
                "modle": "cnn",
                "batch_size": True,
                "lr": "fast",
                "precision": "bf61",
                "epochs": 0,
                "device": "gpu",
                "n_embd": 130,
                "synthetic_shape": [3, 0],
            }
        )
    )
    assert problems["modle"] == "unknown training key 'modle'; did you mean 'model'?"
    assert "integer" in problems["batch_size"]
    assert "number" in problems["lr"]
    assert "did you mean 'bf16'" in problems["precision"]
    assert ">= 1" in problems["epochs"]
    assert "cuda:N" in problems["device"]
    assert "multiple of n_head" in problems["n_embd"]
    assert "positive integers" in problems["synthetic_shape"]


def test_training_section_must_be_a_mapping() -> None:
    assert validate_training(["model"])[0][0] == ""


def test_cli_reports_unknown_key_with_location(
    tmp_path: Path, train_cli: Callable[..., Result]
) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "name: x\nhardware:\n  accelerator: cpu\ntraining:\n  model: cnn\n  epoch: 3\n"
    )
    result = train_cli("--config", str(profile), "--output", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"{profile}:6:3: error: unknown training key 'epoch'; did you mean 'epochs'? "
        "(training.epoch)"
    )
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_cli_accepts_a_bare_training_mapping_and_flags_override(
    tmp_path: Path, train_cli: Callable[..., Result]
) -> None:
    bare = tmp_path / "training.yaml"
    bare.write_text("model: mlp\nbatch_size: 32\nlr: 0.01\n")
    result = train_cli("--config", str(bare), "--epochs", "1", "--max-steps", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "model: mlp" in result.stdout
    bad = train_cli("--config", str(bare), "--batch-size", "0")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == "--batch-size: error: must be >= 1, not 0"


def test_cli_reads_profile_from_env(tmp_path: Path, train_cli: Callable[..., Result]) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text("training:\n  model: lstm\n  optimizr: sgd\n")
    result = train_cli(env={"AIBUILD_PROFILE": str(profile)})
    assert result.exit_code == 1
    assert "did you mean 'optimizer'?" in result.stderr
    assert f"{profile}:3:3:" in result.stderr


def test_cli_config_file_errors(tmp_path: Path, train_cli: Callable[..., Result]) -> None:
    missing = train_cli("--config", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1
    assert "does not exist" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("training:\n  model: [cnn\n")
    result = train_cli("--config", str(broken))
    assert result.exit_code == 1
    assert "invalid YAML" in result.stderr
    assert "Traceback" not in result.output
    bad_set = train_cli("--set", "n_layer=many")
    assert bad_set.exit_code == 1
    assert (
        bad_set.stderr.strip()
        == "--set n_layer: error: must be an integer, not 'many' (training.n_layer)"
    )
