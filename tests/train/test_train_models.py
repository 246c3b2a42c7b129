"""Models fit their data's shapes; every model learns; the LR schedule; checkpoints."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aibuild.errors import TrainError
from aibuild.train.checkpoint import (
    CorruptCheckpoint,
    _umask,
    atomic_save,
    list_checkpoints,
    load_checkpoint,
    resume_candidates,
    save_checkpoint,
)
from aibuild.train.config import TrainConfig
from aibuild.train.data import ArrayDataset, DataBundle, TokenWindows
from aibuild.train.models import GPT, ConvNet, build_model, generate, training_flops_per_token
from aibuild.train.schedule import lr_at


def _image_bundle(c: int, h: int, w: int, n: int = 32, classes: int = 10) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, c, h, w, generator=g) * 0.1
    x[torch.arange(n), 0, :, y % w] += 3.0  # a learnable signal: column y lit
    ds = ArrayDataset(x, y)
    return DataBundle("t", "t", "classify", ds, ds, (c, h, w), classes)


def _text_bundle(block: int = 8) -> DataBundle:
    tokens = torch.tensor([i % 5 for i in range(200)])
    ds = TokenWindows(tokens, block, block)
    return DataBundle("text", "t", "lm", ds, ds, (block,), 5, list("abcde"))


@pytest.mark.parametrize(("c", "h", "w"), [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 48)])
def test_cnn_fits_any_input(c: int, h: int, w: int) -> None:
    model = ConvNet(c, h, w, 10)
    assert model(torch.randn(2, c, h, w)).shape == (2, 10)


def test_cnn_keeps_the_tutorial_shape_on_28x28() -> None:
    model = ConvNet(1, 28, 28, 10)
    assert model.fc1.in_features == 9216  # 64 * 12 * 12, as pytorch/examples mnist
    big = ConvNet(3, 224, 224, 10)
    assert big.fc1.in_features == 64 * 12 * 12  # pooled, not 64 * 110 * 110
    with pytest.raises(TrainError, match="at least 6x6"):
        ConvNet(1, 5, 5, 10)


def _fit(cfg: TrainConfig, bundle: DataBundle, steps: int = 30) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(cfg, bundle)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = bundle.train.__getitems__(list(range(len(bundle.train))))
    losses = []
    for _ in range(steps):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


@pytest.mark.parametrize("name", ["cnn", "mlp", "rnn", "lstm"])
def test_every_classifier_learns(name: str) -> None:
    cfg = TrainConfig(model=name, hidden_size=32)
    first, last = _fit(cfg, _image_bundle(1, 12, 12))
    assert last < first * 0.7, (first, last)


@pytest.mark.parametrize("name", ["transformer", "lstm", "rnn"])
def test_every_language_model_learns(name: str) -> None:
    cfg = TrainConfig(model=name, n_layer=1, n_head=2, n_embd=16, hidden_size=16, block_size=8)
    bundle = _text_bundle()
    first, last = _fit(cfg, bundle, steps=40)
    assert last < first * 0.7, (first, last)
    out = generate(build_model(cfg, bundle), torch.tensor([[0]]), 12, 8)
    assert out.shape == (1, 12)


def test_transformer_needs_text() -> None:
    with pytest.raises(TrainError, match="needs a token dataset"):
        build_model(TrainConfig(model="transformer"), _image_bundle(1, 8, 8))


def test_lr_schedule_warmup_cosine_constant() -> None:
    kw = {"lr": 1.0, "total_steps": 110, "warmup_steps": 10, "min_lr": 0.1}
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_at(50, lr=0.5, total_steps=100, schedule="constant") == 0.5
    assert lr_at(3, lr=0.5, total_steps=100, warmup_steps=4, schedule="constant") == 0.5
    assert lr_at(0, lr=2.0, total_steps=4) == 2.0
    assert lr_at(2, lr=2.0, total_steps=4) == pytest.approx(1.0 + math.cos(math.pi / 2))


def test_atomic_save_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "ckpt-00000001.pt"
    atomic_save({"model": {}, "step": 1}, target)
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self) -> tuple[object, ...]:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": Unpicklable(), "step": 2}, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001.pt"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_keep_last_k_and_resume_auto(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    assert resume_candidates("auto", d) == []
    for step in (5, 10, 15, 20, 100):
        save_checkpoint({"model": {"w": torch.tensor([step])}, "step": step}, d, step, keep=3)
    names = [p.name for p in list_checkpoints(d)]
    assert names == ["ckpt-00000015.pt", "ckpt-00000020.pt", "ckpt-00000100.pt"]
    newest = resume_candidates("auto", d)
    assert [p.name for p in newest] == names[::-1]
    assert load_checkpoint(newest[0])["step"] == 100
    assert resume_candidates(str(d / "ckpt-00000020.pt"), d) == [d / "ckpt-00000020.pt"]
    with pytest.raises(TrainError, match="no such checkpoint"):
        resume_candidates(str(tmp_path / "missing.pt"), d)
    (d / "junk.pt").write_bytes(b"nope")
    with pytest.raises(CorruptCheckpoint, match=r"junk.pt is unusable: \w+"):
        load_checkpoint(d / "junk.pt")


def test_transformer_flops_per_token_is_palm_formula() -> None:
    """6N + 12·L·d·T with N the parameters less the position embedding."""
    cfg = TrainConfig(model="transformer", n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = GPT(50, cfg)
    n = sum(p.numel() for p in model.parameters()) - 16 * 32
    assert training_flops_per_token(model, cfg) == 6 * n + 12 * 2 * 32 * 16
    assert training_flops_per_token(nn.Linear(2, 2), cfg) is None
