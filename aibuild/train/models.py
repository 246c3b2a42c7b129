"""The model registry: ``training.model`` name -> builder(config, data) -> nn.Module.

Every classifier maps ``[B, C, H, W]`` to ``[B, classes]``; every language model
maps ``[B, T]`` token ids to ``[B, T, vocab]``. Shapes come from the data, so
each model fits any input size the dataset has.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from aibuild.errors import TrainError
from aibuild.train.config import TrainConfig
from aibuild.train.data import DataBundle


class ConvNet(nn.Module):
    """The classic two-conv MNIST classifier (pytorch/examples), sized from its input.

    The tutorial flattens ``64 * 12 * 12`` after two unpadded 3x3 convs and a 2x2
    max-pool, which only fits 28x28 (and copies that use ``64 * 6 * 6`` crash on
    it). Here the flatten size is computed from the input: ``H - 4`` then halved.
    Inputs larger than 24x24 after the convs are average-pooled to 12x12 first,
    so a 224x224 image does not give a 3M-wide linear layer.
    """

    MAX_SIDE = 12

    def __init__(self, channels: int, height: int, width: int, classes: int) -> None:
        super().__init__()
        if height < 6 or width < 6:
            raise TrainError(f"model 'cnn' needs images of at least 6x6, got {height}x{width}")
        self.conv1 = nn.Conv2d(channels, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        side_h, side_w = (height - 4) // 2, (width - 4) // 2
        out_h, out_w = min(side_h, self.MAX_SIDE), min(side_w, self.MAX_SIDE)
        self.pool: nn.Module = (
            nn.AdaptiveAvgPool2d((out_h, out_w))
            if (out_h, out_w) != (side_h, side_w)
            else nn.Identity()
        )
        self.fc1 = nn.Linear(64 * out_h * out_w, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.pool(F.max_pool2d(x, 2))
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers, a linear classifier."""

    def __init__(self, in_features: int, hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class RecurrentClassifier(nn.Module):
    """RNN/LSTM over an image's rows (H steps of C*W features); last output -> class."""

    def __init__(self, cell: str, features: int, cfg: TrainConfig, classes: int) -> None:
        super().__init__()
        rnn_cls = nn.LSTM if cell == "lstm" else nn.RNN
        self.rnn = rnn_cls(
            features,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


class RecurrentLM(nn.Module):
    """RNN/LSTM character language model: embedding -> recurrent layers -> next-token logits."""

    def __init__(self, cell: str, vocab: int, cfg: TrainConfig) -> None:
        super().__init__()
        rnn_cls = nn.LSTM if cell == "lstm" else nn.RNN
        self.embed = nn.Embedding(vocab, cfg.hidden_size)
        self.rnn = rnn_cls(
            cfg.hidden_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_size, vocab)
        self.block_size = cfg.block_size

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(idx))
        return self.head(out)  # type: ignore[no-any-return]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.proj(y))  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))  # type: ignore[no-any-return]


class GPT(nn.Module):
    """A small decoder-only transformer (nanoGPT's shape): learned positions, pre-norm
    blocks, weight-tied output head."""

    def __init__(self, vocab: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.block_size = cfg.block_size
        self.tok = nn.Embedding(vocab, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, vocab, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # type: ignore[no-any-return]


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    tokens: int,
    block_size: int,
    temperature: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``tokens`` continuation ids after ``prompt`` ([1, T]) from a language model."""
    was_training = model.training
    model.eval()
    idx = prompt
    for _ in range(tokens):
        logits = model(idx[:, -block_size:])[:, -1, :].float() / temperature
        probs = F.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx[:, prompt.shape[1] :]


Builder = Callable[[TrainConfig, DataBundle], nn.Module]


def _image_shape(name: str, data: DataBundle) -> tuple[int, int, int]:
    if data.task != "classify" or len(data.input_shape) != 3:
        raise TrainError(f"model {name!r} needs an image dataset, got {data.name!r}")
    c, h, w = data.input_shape
    return c, h, w


def _cnn(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    c, h, w = _image_shape("cnn", data)
    return ConvNet(c, h, w, data.num_classes)


def _mlp(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    c, h, w = _image_shape("mlp", data)
    return MLP(c * h * w, cfg.hidden_size, data.num_classes, cfg.dropout)


def _recurrent(cell: str) -> Builder:
    def build(cfg: TrainConfig, data: DataBundle) -> nn.Module:
        if data.task == "lm":
            return RecurrentLM(cell, data.num_classes, cfg)
        c, _h, w = _image_shape(cell, data)
        return RecurrentClassifier(cell, c * w, cfg, data.num_classes)

    return build


def _transformer(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    if data.task != "lm":
        raise TrainError(f"model 'transformer' needs a token dataset (text), got {data.name!r}")
    return GPT(data.num_classes, cfg)


MODELS: dict[str, Builder] = {
    "cnn": _cnn,
    "mlp": _mlp,
    "rnn": _recurrent("rnn"),
    "lstm": _recurrent("lstm"),
    "transformer": _transformer,
}


def build_model(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    """The configured model, shaped for the data."""
    try:
        builder = MODELS[cfg.model]
    except KeyError:
        raise TrainError(f"unknown model {cfg.model!r}; known: {', '.join(MODELS)}") from None
    return builder(cfg, data)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_flops_per_token(model: nn.Module, cfg: TrainConfig) -> float | None:
    """Forward + backward FLOPs per token of the transformer (PaLM, appendix B; nanoGPT's
    ``estimate_mfu``): 6N + 12·L·d·T, with N the parameters less the position embedding
    (the token embedding is tied to the output head, so it is counted once, as the head's
    matmul). None for the other models."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if not isinstance(model, GPT):
        return None
    n = count_parameters(model) - model.pos.weight.numel()
    return float(6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size)
