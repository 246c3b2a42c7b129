"""The classic PyTorch MNIST example (pytorch/examples, mnist/main.py), as a user's own
training script, fixed so that it runs anywhere, offline:

- no torchvision and no download: it reads the four MNIST IDX files (raw or .gz) from
  --data / $AIBUILD_DATA, else the handwritten digits every aibuild image carries
  (aibuild/train/assets/digits: 1,797 8x8 images in the same format), else a small
  synthetic set;
- the network's flatten size is computed from the input (9216 for 28x28 MNIST, 256 for
  the 8x8 digits) instead of hard-coded;
- results go to --output / $AIBUILD_OUTPUT (the `aibuild run` mount), else ./output.

    python train.py [--epochs 14] [--batch-size 64] [--lr 1.0] [--data DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Net(nn.Module):
    """pytorch/examples' MNIST net; ``side`` is the input's height and width."""

    def __init__(self, side: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        pooled = (side - 4) // 2  # two 3x3 convolutions, then a 2x2 max-pool
        self.fc1 = nn.Linear(64 * pooled * pooled, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), raw or gzipped, as a numpy array."""
    found = path if path.exists() else path.with_name(path.name + ".gz")
    data = found.read_bytes()
    if found.suffix == ".gz":
        data = gzip.decompress(data)
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def bundled_digits() -> Path | None:
    """The digits shipped with aibuild (in every aibuild image), when aibuild is here."""
    try:
        from importlib.resources import files

        path = Path(str(files("aibuild.train").joinpath("assets", "digits")))
    except ModuleNotFoundError:
        return None
    return path if path.is_dir() else None


def load(data_dir: Path | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if data_dir is None:  # synthetic: 10 classes of noisy 8x8 patterns
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        labels = torch.randint(0, 10, (1000 if split == "train" else 200,), generator=g)
        protos = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(42))
        images = protos[labels] + 0.3 * torch.randn(len(labels), 1, 8, 8, generator=g)
        return images, labels
    images_file, labels_file = FILES[split]
    images = torch.from_numpy(read_idx(data_dir / images_file).astype(np.float32) / 255.0)
    labels = torch.from_numpy(read_idx(data_dir / labels_file).astype(np.int64))
    images = (images - 0.1307) / 0.3081  # MNIST's mean and standard deviation
    return images.unsqueeze(1), labels


def batches(x: torch.Tensor, y: torch.Tensor, size: int, shuffle: bool, seed: int = 0):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    order = order if shuffle else torch.arange(len(x))
    for start in range(0, len(x), size):
        index = order[start : start + size]
        yield x[index], y[index]


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch MNIST example, offline")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-batch-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--dry-run", action="store_true", help="one batch, then stop")
    parser.add_argument("--data", default=os.environ.get("AIBUILD_DATA"))
    parser.add_argument("--output", default=os.environ.get("AIBUILD_OUTPUT", "output"))
    parser.add_argument("--no-save-model", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = Path(args.data) if args.data else bundled_digits()
    where = data_dir or "synthetic data"
    print(f"torch {torch.__version__} on {device}; data: {where}", flush=True)
    train_x, train_y = load(data_dir, "train")
    test_x, test_y = load(data_dir, "test")
    model = Net(side=train_x.shape[-1]).to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    started = time.monotonic()
    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        for step, (x, y) in enumerate(
            batches(train_x, train_y, args.batch_size, True, args.seed + epoch)
        ):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
            if step % args.log_interval == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.4f}", flush=True)
            if args.dry_run:
                break
        model.eval()
        correct, total_loss = 0, 0.0
        with torch.no_grad():
            for x, y in batches(test_x, test_y, args.test_batch_size, False):
                out = model(x.to(device))
                total_loss += F.nll_loss(out, y.to(device), reduction="sum").item()
                correct += int((out.argmax(dim=1).cpu() == y).sum())
        accuracy = correct / len(test_x)
        print(
            f"epoch {epoch}: test loss {total_loss / len(test_x):.4f}, "
            f"accuracy {correct}/{len(test_x)} ({100 * accuracy:.1f}%)",
            flush=True,
        )
        scheduler.step()
        if args.dry_run:
            break
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if not args.no_save_model:
        torch.save(model.state_dict(), output / "mnist_cnn.pt")
    summary = {"accuracy": accuracy, "epochs": args.epochs, "seconds": time.monotonic() - started}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done: accuracy {100 * accuracy:.1f}%, results in {output}", flush=True)


if __name__ == "__main__":
    main()
