"""``aibuild train`` end to end on CPU: outputs, resume, signals, dry run, selftest."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result

EMBEDDED_ACCURACY = 0.95  # documented in the README: the default run reaches at least this


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> None:
    sa = torch.load(a, weights_only=True)
    sb = torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow
def test_embedded_default_reaches_documented_accuracy(
    tmp_path: Path, train_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    result = train_cli("--output", str(out))
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == 10 and summary["steps"] == 240
    assert summary["eval"]["accuracy"] >= EMBEDDED_ACCURACY, summary["eval"]
    assert summary["samples_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    records = _metrics(out)
    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == list(range(10, 241, 10))
    assert {"step", "loss", "lr", "samples_per_s", "elapsed_s"} <= train[0].keys()
    assert len([r for r in records if r["type"] == "eval"]) == 10
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["ckpt-00000192.pt", "ckpt-00000216.pt", "ckpt-00000240.pt"]  # keep 3
    assert "completed: 240 steps" in result.stdout
    assert summary["elapsed_s"] < 120


@pytest.mark.slow
def test_resume_after_epoch_gives_identical_weights(
    tmp_path: Path, train_cli: Callable[..., Result]
) -> None:
    common = ["--deterministic", "--epochs", "2", "--batch-size", "128", "--set", "warmup_steps=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_cli(*common, "--output", str(straight)).exit_code == 0
    first = train_cli(*common, "--output", str(split), "--max-steps", "12")  # 12 steps = epoch 1
    assert first.exit_code == 0, first.output
    assert _summary(split)["epochs_completed"] == 1
    second = train_cli(*common, "--output", str(split), "--resume", "auto")
    assert second.exit_code == 0, second.output
    assert "resumed from" in second.stdout and "(step 12, epoch 2, batch 0)" in second.stdout
    _same_weights(straight / "model.pt", split / "model.pt")
    a = torch.load(straight / "checkpoints" / "ckpt-00000024.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "ckpt-00000024.pt", weights_only=True)
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches(tmp_path: Path, train_cli: Callable[..., Result]) -> None:
    """A real SIGTERM mid-epoch: checkpoint, exit 143, then --resume auto ends where a
    straight run ends, bit for bit (deterministic mode on CPU)."""
    common = [
        "--deterministic",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-steps",
        "60",
        "--set",
        "log_every=1",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aibuild", "train", *common, "--output", str(killed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if " step 5/" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "no progress"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "training stopped by SIGTERM; checkpoint saved to" in err
    assert "Traceback" not in err
    saved = torch.load(sorted((killed / "checkpoints").iterdir())[-1], weights_only=True)
    assert 5 <= saved["step"] < 60 and saved["epoch"] == 0  # mid-epoch 1 (188 steps)
    resumed = train_cli(*common, "--output", str(killed), "--resume", "auto")
    assert resumed.exit_code == 0, resumed.output
    straight = tmp_path / "straight"
    assert train_cli(*common, "--output", str(straight)).exit_code == 0
    _same_weights(straight / "model.pt", killed / "model.pt")


def test_cnn_on_28x28_mnist_files(
    tmp_path: Path, train_cli: Callable[..., Result], make_mnist: Callable[..., Path]
) -> None:
    root = make_mnist(tmp_path / "mnist", n_train=64, n_test=16)
    out = tmp_path / "out"
    result = train_cli(
        "--dataset",
        "mnist",
        "--data",
        str(root),
        "--output",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--channels-last",
        "--set",
        "grad_accum_steps=2",
        "--set",
        "clip_grad_norm=1.0",
    )
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert "shape [1, 28, 28]" in summary["dataset"]
    assert summary["steps"] == 4  # 4 micro-batches per epoch, 2 per step


def test_cnn_on_cifar_batches_with_sgd(
    tmp_path: Path, train_cli: Callable[..., Result], make_cifar: Callable[..., Path]
) -> None:
    root = make_cifar(tmp_path / "cifar", per_batch=16, batches=2)
    out = tmp_path / "out"
    result = train_cli(
        "--data",
        str(root),
        "--output",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--set",
        "checkpoint_every=1",
        "--set",
        "keep_checkpoints=2",
    )
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert (
        summary["dataset"].startswith("cifar10 from") and "shape [3, 32, 32]" in summary["dataset"]
    )
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "ckpt-00000001.pt",
        "ckpt-00000002.pt",
    ]


def test_transformer_on_embedded_text_samples(
    tmp_path: Path, train_cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    result = train_cli(
        "--model",
        "transformer",
        "--output",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--set",
        "n_layer=1",
        "--set",
        "n_embd=32",
        "--set",
        "block_size=16",
        "--set",
        "sample_tokens=20",
        "--set",
        "eval=true",
    )
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert summary["status"] == "max_steps" and summary["steps"] == 3
    # tokens/s is samples/s times the context; no MFU on a CPU (no tensor-core peak)
    assert summary["tokens_per_s"] == pytest.approx(summary["samples_per_s"] * 16, rel=0.01)
    assert summary["model_tflops_per_device"] > 0 and summary["mfu"] is None
    assert "tokens/s" in result.stdout
    assert isinstance(summary["sample"], str) and len(summary["sample"]) == 20
    assert "macbeth.txt" in summary["dataset"]


def test_imagefolder_of_pngs(
    tmp_path: Path, train_cli: Callable[..., Result], png: Callable[..., bytes]
) -> None:
    root = tmp_path / "shapes"
    for k, name in enumerate(["bars", "dots", "flat"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            px = [
                [[(k * 90 + (x * y if k == 1 else x) * (k + 1) + i) % 256] for x in range(10)]
                for y in range(10)
            ]
            (root / name / f"{i:02d}.png").write_bytes(png(px))
    out = tmp_path / "out"
    result = train_cli(
        "--dataset",
        "imagefolder",
        "--data",
        str(root),
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--set",
        "eval_fraction=0.2",
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert "24 train / 6 eval samples, shape [1, 10, 10], 3 classes" in summary["dataset"]


def test_dry_run_writes_nothing(tmp_path: Path, train_cli: Callable[..., Result]) -> None:
    out = tmp_path / "out"
    result = train_cli("--dry-run", "--output", str(out), "--model", "lstm")
    assert result.exit_code == 0, result.output
    assert "dry run ok: train loss" in result.stdout and "eval loss" in result.stdout
    assert not out.exists()


def test_resume_mismatched_model_is_clear(tmp_path: Path, train_cli: Callable[..., Result]) -> None:
    out = tmp_path / "out"
    assert train_cli("--model", "mlp", "--output", str(out), "--max-steps", "1").exit_code == 0
    again = train_cli("--model", "mlp", "--output", str(out))  # fresh run over old checkpoints
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        f"{out / 'checkpoints'} already holds checkpoints of an earlier run (newest: "
        "ckpt-00000001.pt): pass --resume auto to continue it, or use another --output"
    )
    result = train_cli("--model", "rnn", "--output", str(out), "--resume", "auto")
    assert result.exit_code == 1
    assert "does not fit this model/config" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("accelerator", "code"), [("cpu", 0), ("nvidia", 1)])
def test_selftest(
    tmp_path: Path, train_cli: Callable[..., Result], accelerator: str, code: int
) -> None:
    if accelerator == "nvidia" and torch.cuda.is_available():
        pytest.skip("this host has a working GPU")
    profile = tmp_path / "p.yaml"
    profile.write_text(f"name: t\nhardware:\n  accelerator: {accelerator}\n")
    result = train_cli("--selftest", "--config", str(profile))
    assert result.exit_code == code, result.output
    assert f"torch {torch.__version__}" in result.stdout
    assert "TFLOP/s" in result.stdout and "GB/s" in result.stdout
    assert "NCCL" in result.stdout
    if code:
        assert result.stderr.strip().startswith(
            "selftest failed: the profile expects an NVIDIA GPU"
        )
    else:
        assert "selftest ok" in result.stdout


def test_runs_with_only_the_image_runtime_deps(tmp_path: Path) -> None:
    """Inside the image only torch, click and pyyaml are there: no numpy, jinja2, docker,
    packaging, PIL or torchvision may be imported on the trainer's path."""
    code = (
        "import sys\n"
        "for m in ('numpy', 'jinja2', 'docker', 'packaging', 'PIL', 'torchvision'):\n"
        "    sys.modules[m] = None\n"
        "from aibuild.cli import main\n"
        f"main(['train', '--dry-run', '--model', 'cnn', '--output', {str(tmp_path)!r}])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run ok" in proc.stdout
