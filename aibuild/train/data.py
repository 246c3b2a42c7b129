"""Datasets: readers for standard on-disk formats, held in memory as tensors.

Formats (``training.dataset``):

- ``mnist``: the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or ``.gz``.
  The embedded default (``assets/digits/``) is stored in this format.
- ``cifar10``: the python pickle batches (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``), in the directory or its ``cifar-10-batches-py/``, read with a
  restricted unpickler (no numpy needed; a hostile pickle cannot run code).
- ``imagefolder``: one sub-directory per class (``train/`` and ``val/``/``test/``
  splits, or classes directly, split by ``eval_fraction``). Without PIL only
  these files are read: PNG (8-bit, non-interlaced; decoded with zlib),
  PGM/PPM/PNM (binary or ASCII), and ``.pt`` tensors (``[C,H,W]`` or ``[H,W]``).
  Images are resized to the first image's size.
- ``text``: a UTF-8 file (or a directory with ``input.txt``), character level;
  the last ``eval_fraction`` is held out.
- ``synthetic``: seeded random tensors of ``synthetic_shape`` (benchmarks).

Nothing is ever downloaded. A missing or malformed dataset raises ``TrainError``
naming the files that were expected and where. The decoders, and the limits on
what a file may declare, are in :mod:`~aibuild.train.formats`; a whole dataset
holds at most :data:`MAX_DATASET_VALUES` values and
:data:`~aibuild.train.formats.MAX_CLASSES` classes (or characters of a vocabulary).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler, Sampler

from aibuild.errors import TrainError
from aibuild.train.config import TrainConfig, shown
from aibuild.train.distributed import DistInfo
from aibuild.train.formats import (
    MAX_CLASSES,
    array_tensor,
    decode_png,
    decode_pnm,
    decode_tensor_image,
    load_pickle,
    read_file,
    read_idx,
)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_DIGITS = ASSETS_DIR / "digits"
EMBEDDED_TEXT = ASSETS_DIR / "text" / "macbeth.txt"
MAX_DATASET_VALUES = 1 << 31
"""2,147,483,648: the most values (samples x channels x height x width) an image
dataset may hold in memory (8 GiB as float32), checked before images are resized."""

SEQUENCE_MODELS = ("transformer",)
IMAGE_ONLY_MODELS = ("cnn", "mlp")


class ArrayDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Inputs and targets in memory; batches are gathered with one index op."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        assert len(inputs) == len(targets)
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader calls this with a whole batch of indices: one gather, no per-sample collate.
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[idx], self.targets[idx]


class TokenWindows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Next-token windows over a token stream: (x[t:t+T], x[t+1:t+T+1]) at a fixed stride."""

    def __init__(self, tokens: torch.Tensor, block_size: int, stride: int) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.starts = torch.arange(0, len(tokens) - block_size - 1 + 1, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.starts[torch.as_tensor(indices, dtype=torch.long)]
        offsets = starts[:, None] + torch.arange(self.block_size + 1)[None, :]
        window = self.tokens[offsets]
        return window[:, :-1], window[:, 1:]


def batch_collate(batch: Any) -> Any:
    """The collate function for datasets with ``__getitems__``: batches come pre-stacked."""
    return batch


class ResumableSampler(Sampler[int]):
    """A DistributedSampler whose epoch and number of already-seen samples can be set.

    The order of an epoch is a function of (seed, epoch) alone, so skipping the
    first ``skip`` indices resumes mid-epoch exactly where a run stopped.
    """

    def __init__(self, dataset: torch.utils.data.Dataset[Any], info: DistInfo, seed: int) -> None:
        self.base: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
        )
        self.epoch = 0
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        self.base.set_epoch(self.epoch)
        it = iter(self.base)
        for _ in range(min(self.skip, len(self.base))):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)

    def samples_per_epoch(self) -> int:
        return len(self.base)


class ShardSampler(Sampler[int]):
    """Every world_size-th index from rank: each sample evaluated exactly once in total."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class DataBundle:
    """What a model and the loop need to know about the data."""

    name: str  # the format that was read
    source: str  # where from (a path, or "synthetic")
    task: str  # "classify" (one label per sample) | "lm" (a label per token)
    train: ArrayDataset | TokenWindows
    eval: ArrayDataset | TokenWindows | None
    input_shape: tuple[int, ...]  # (C, H, W) for images, (T,) for token windows
    num_classes: int  # classes, or vocabulary size for "lm"
    vocab: list[str] | None = None  # characters, for decoding samples


# ---------------------------------------------------------------------------- resolution


def resolve_source(cfg: TrainConfig) -> tuple[str, Path | None]:
    """(dataset format, data path) after applying ``auto`` and the embedded defaults.

    ``cfg.data_dir`` is already the flag/env/profile choice (the CLI fills it from
    ``--data`` or ``$AIBUILD_DATA``). ``auto`` with no path is the embedded data;
    ``auto`` with a path guesses the format from the files there.
    """
    path = Path(cfg.data_dir).expanduser() if cfg.data_dir else None
    name = cfg.dataset
    if name == "auto":
        if path is None:
            if cfg.model in SEQUENCE_MODELS:
                return "text", EMBEDDED_TEXT
            return "mnist", EMBEDDED_DIGITS
        name = _guess_format(path)
    if name == "synthetic":
        return name, None
    if path is None:
        if name == "mnist":
            return name, EMBEDDED_DIGITS
        if name == "text":
            return name, EMBEDDED_TEXT
        raise TrainError(
            f"dataset {name!r} needs its files: pass --data DIR (or set AIBUILD_DATA, or "
            f"training.data_dir); expected there: {_EXPECTED[name]}"
        )
    return name, path


_EXPECTED = {
    "mnist": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (each raw or .gz)",
    "cifar10": "data_batch_1 .. data_batch_5 and test_batch (python pickles), directly or "
    "in cifar-10-batches-py/",
    "imagefolder": "one sub-directory per class (or train/ and val/ holding them) with "
    ".png, .pgm, .ppm, .pnm or .pt files",
    "text": "a UTF-8 text file (or a directory holding input.txt)",
}


def _absent(path: Path) -> str:
    return "is a file, not a directory" if path.exists() else "does not exist"


def _guess_format(path: Path) -> str:
    if path.is_file():
        return "text"
    if not path.is_dir():
        raise TrainError(f"data directory {path} does not exist")
    names = {p.name for p in path.iterdir()}
    if any(n.startswith(("train-images", "train-labels")) for n in names):
        return "mnist"
    if "cifar-10-batches-py" in names or "test_batch" in names or "data_batch_1" in names:
        return "cifar10"
    if "input.txt" in names:
        return "text"
    return "imagefolder"


def load_data(cfg: TrainConfig) -> DataBundle:
    """Read the configured dataset into memory."""
    name, path = resolve_source(cfg)
    if name == "mnist":
        assert path is not None
        bundle = load_mnist(path)
    elif name == "cifar10":
        assert path is not None
        bundle = load_cifar10(path)
    elif name == "imagefolder":
        assert path is not None
        bundle = load_imagefolder(path, cfg.eval_fraction)
    elif name == "text":
        assert path is not None
        bundle = load_text(path, cfg.block_size, cfg.eval_fraction)
    else:
        bundle = load_synthetic(cfg)
    _check_model_fits(cfg.model, bundle)
    return bundle


def _check_model_fits(model: str, bundle: DataBundle) -> None:
    if bundle.task == "lm" and model in IMAGE_ONLY_MODELS:
        raise TrainError(
            f"model {model!r} classifies images, but dataset {bundle.name!r} is a token "
            "stream: use model transformer, rnn or lstm, or an image dataset"
        )
    if bundle.task == "classify" and model in SEQUENCE_MODELS:
        raise TrainError(
            f"model {model!r} is a language model, but dataset {bundle.name!r} holds "
            "labelled images: use dataset text (or synthetic), or another model"
        )


def _normalize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """uint8 [N,C,H,W] -> float, standardised per channel with the training statistics."""
    x = train.float().div_(255)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    out = [(x - mean) / std]
    out.extend((o.float().div_(255) - mean) / std for o in others)
    return out


# ---------------------------------------------------------------------------- mnist (IDX)


def _find_idx(root: Path, split: str, kind: str, rank: int) -> Path | None:
    for sep in ("-", "."):
        base = f"{split}-{kind}{sep}idx{rank}-ubyte"
        for candidate in (root / base, root / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_mnist(root: Path) -> DataBundle:
    """MNIST-format IDX files: train-* for training, t10k-* for evaluation."""
    if not root.is_dir():
        raise TrainError(
            f"mnist dataset: directory {root} {_absent(root)}; expected {_EXPECTED['mnist']}"
        )
    wanted = [(s, k, r) for s in ("train", "t10k") for k, r in (("images", 3), ("labels", 1))]
    found = {w: _find_idx(root, *w) for w in wanted}
    missing = [f"{s}-{k}-idx{r}-ubyte[.gz]" for (s, k, r), p in found.items() if p is None]
    if missing:
        raise TrainError(f"mnist dataset: missing in {root}: {', '.join(missing)}")
    splits = {}
    for split in ("train", "t10k"):
        ipath, lpath = found[(split, "images", 3)], found[(split, "labels", 1)]
        assert ipath is not None and lpath is not None
        idims, ibytes = read_idx(ipath)
        ldims, lbytes = read_idx(lpath)
        if len(idims) != 3:
            raise TrainError(f"{ipath}: expected 3 dimensions (N, H, W), found {len(idims)}")
        if len(ldims) != 1 or ldims[0] != idims[0]:
            raise TrainError(f"{lpath}: {ldims[0]} labels for {idims[0]} images in {ipath.name}")
        if 0 in idims:
            raise TrainError(
                f"{ipath}: holds no images (its IDX header says {'x'.join(map(str, idims))})"
            )
        images = torch.frombuffer(bytearray(ibytes), dtype=torch.uint8).view(
            idims[0], 1, *idims[1:]
        )
        labels = torch.frombuffer(bytearray(lbytes), dtype=torch.uint8).long()
        splits[split] = (images, labels)
    (tx, ty), (ex, ey) = splits["train"], splits["t10k"]
    if tx.shape[1:] != ex.shape[1:]:
        raise TrainError(
            f"mnist dataset in {root}: train images are {tuple(tx.shape[2:])}, "
            f"test images {tuple(ex.shape[2:])}"
        )
    tx, ex = _normalize(tx, ex)
    classes = int(max(ty.max().item(), ey.max().item())) + 1
    return DataBundle(
        "mnist",
        str(root),
        "classify",
        ArrayDataset(tx, ty),
        ArrayDataset(ex, ey),
        tuple(tx.shape[1:]),
        classes,
    )


# ---------------------------------------------------------------------------- cifar10


def _cifar_labels(value: Any, path: Path) -> torch.Tensor:
    """A flat list (or 1-D integer array) of labels in 0 .. MAX_CLASSES - 1."""
    if isinstance(value, list):
        for v in value:
            if type(v) is not int or not 0 <= v < MAX_CLASSES:
                raise TrainError(
                    f"{path}: labels must be a flat list of integers 0 .. {MAX_CLASSES - 1}, "
                    f"found {shown(v)}"
                )
        return torch.tensor(value, dtype=torch.long)
    y = array_tensor(value)
    if y is None or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise TrainError(f"{path}: labels must be a list or a 1-D integer array")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= MAX_CLASSES):
        raise TrainError(
            f"{path}: labels must be integers 0 .. {MAX_CLASSES - 1}, found "
            f"{int(y.min()) if int(y.min()) < 0 else int(y.max())}"
        )
    return y


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise TrainError(f"{path}: not a CIFAR-10 python batch (no dict inside)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise TrainError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries")
    x = array_tensor(data)
    if x is None or x.dtype != torch.uint8:
        raise TrainError(f"{path}: data must be bytes or a uint8 array")
    y = _cifar_labels(labels, path)
    if x.numel() != len(y) * 3072:
        raise TrainError(
            f"{path}: {x.numel()} data bytes for {len(y)} labels (need 3072 per image)"
        )
    if not len(y):
        raise TrainError(f"{path}: holds no images")
    return x.reshape(len(y), 3, 32, 32), y


def load_cifar10(root: Path) -> DataBundle:
    """CIFAR-10's python batches; every data_batch_N present trains, test_batch evaluates."""
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise TrainError(
            f"cifar10 dataset: directory {root} {_absent(root)}; expected {_EXPECTED['cifar10']}"
        )
    train_files = sorted(root.glob("data_batch_[0-9]*"))
    missing = [n for n in ("data_batch_1", "test_batch") if not (root / n).is_file()]
    if missing:
        raise TrainError(
            f"cifar10 dataset: missing in {root}: {', '.join(missing)} "
            f"(expected {_EXPECTED['cifar10']})"
        )
    parts = [_read_cifar_batch(p) for p in train_files]
    tx = torch.cat([p[0] for p in parts])
    ty = torch.cat([p[1] for p in parts])
    ex, ey = _read_cifar_batch(root / "test_batch")
    tx, ex = _normalize(tx, ex)
    classes = max(10, int(max(ty.max().item(), ey.max().item())) + 1)
    return DataBundle(
        "cifar10",
        str(root),
        "classify",
        ArrayDataset(tx, ty),
        ArrayDataset(ex, ey),
        (3, 32, 32),
        classes,
    )


# ---------------------------------------------------------------------------- imagefolder

IMAGE_SUFFIXES = (".png", ".pgm", ".ppm", ".pnm", ".pt")


def read_image(path: Path) -> torch.Tensor:
    """One image file -> uint8 [C,H,W] (C = 1 or 3)."""
    if path.suffix.lower() == ".pt":
        return decode_tensor_image(path)
    data = read_file(path, "image")
    img = (
        decode_png(data, str(path))
        if path.suffix.lower() == ".png"
        else decode_pnm(data, str(path))
    )
    if img.shape[0] not in (1, 3):
        raise TrainError(f"{path}: {img.shape[0]} channels (need 1 or 3)")
    return img


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(cls_dir: Path) -> list[Path]:
    files = sorted(p for p in cls_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    bad = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad:
        raise TrainError(
            f"imagefolder dataset: cannot read {bad[0]}: only {', '.join(IMAGE_SUFFIXES)} files "
            "are supported (no PIL in the trainer; convert JPEGs to PNG)"
        )
    return files


def load_imagefolder(root: Path, eval_fraction: float) -> DataBundle:
    """A class per sub-directory; train/ + val/ (or test/) when present, else a split."""
    if not root.is_dir():
        raise TrainError(
            f"imagefolder dataset: directory {root} {_absent(root)}; "
            f"expected {_EXPECTED['imagefolder']}"
        )
    train_root = root / "train"
    eval_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    train_items: list[tuple[Path, int]] = []
    eval_items: list[tuple[Path, int]] = []
    if train_root.is_dir():
        classes = [p.name for p in _class_dirs(train_root)]
        for label, name in enumerate(classes):
            train_items += [(f, label) for f in _files(train_root / name)]
            if eval_root is not None and (eval_root / name).is_dir():
                eval_items += [(f, label) for f in _files(eval_root / name)]
    else:
        classes = [p.name for p in _class_dirs(root)]
        every = round(1 / eval_fraction) if eval_fraction > 0 else 0
        for label, name in enumerate(classes):
            for i, f in enumerate(_files(root / name)):
                held = every > 0 and i % every == every - 1
                (eval_items if held else train_items).append((f, label))
    if not classes or not train_items:
        raise TrainError(
            f"imagefolder dataset: no images in {root}; expected {_EXPECTED['imagefolder']}"
        )
    if len(classes) > MAX_CLASSES:
        raise TrainError(
            f"imagefolder dataset: {len(classes):,} class directories in {root}, more than "
            f"the limit of {MAX_CLASSES:,}"
        )
    images = [read_image(f) for f, _ in train_items + eval_items]
    channels = max(img.shape[0] for img in images)
    size = tuple(images[0].shape[1:])
    values = len(images) * channels * size[0] * size[1]
    if values > MAX_DATASET_VALUES:
        raise TrainError(
            f"imagefolder dataset: {len(images)} images resized to {channels}x{size[0]}x{size[1]} "
            f"(the first image's size, {images[0].shape[1]}x{images[0].shape[2]}) are {values:,} "
            f"values, more than the limit of {MAX_DATASET_VALUES:,}: make the images smaller"
        )
    fixed = []
    for img in images:
        if img.shape[0] != channels:
            img = img.expand(channels, -1, -1)
        if tuple(img.shape[1:]) != size:
            img = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        fixed.append(img)
    stacked = torch.stack(fixed)
    labels = torch.tensor([lab for _, lab in train_items + eval_items], dtype=torch.long)
    n = len(train_items)
    tx, ex = _normalize(stacked[:n], stacked[n:])
    eval_ds = ArrayDataset(ex, labels[n:]) if eval_items else None
    return DataBundle(
        "imagefolder",
        str(root),
        "classify",
        ArrayDataset(tx, labels[:n]),
        eval_ds,
        tuple(tx.shape[1:]),
        len(classes),
    )


# ---------------------------------------------------------------------------- text


def load_text(path: Path, block_size: int, eval_fraction: float) -> DataBundle:
    """A UTF-8 file, tokenised by character; the last ``eval_fraction`` evaluates."""
    if path.is_dir():
        candidates = (
            [path / "input.txt"] if (path / "input.txt").is_file() else sorted(path.glob("*.txt"))
        )
        if len(candidates) != 1:
            raise TrainError(
                f"text dataset: expected input.txt (or exactly one .txt file) in {path}"
            )
        path = candidates[0]
    if not path.is_file():
        raise TrainError(f"text dataset: {path} does not exist; expected {_EXPECTED['text']}")
    try:
        text = read_file(path, "text dataset").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(
            f"text dataset: {path} is not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    if not text.strip():
        raise TrainError(f"text dataset: {path} is empty")
    # code points -> (sorted distinct code points, each character's index among them)
    points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    distinct, tokens = torch.unique(points, sorted=True, return_inverse=True)
    if len(distinct) > MAX_CLASSES:
        raise TrainError(
            f"text dataset: {path} has {len(distinct):,} distinct characters, more than the "
            f"{MAX_CLASSES:,} a vocabulary may have"
        )
    vocab = [chr(c) for c in distinct.tolist()]
    n_eval = int(len(tokens) * eval_fraction)
    if n_eval and n_eval < block_size + 2:
        n_eval = 0
    train_tokens = tokens[: len(tokens) - n_eval]
    if len(train_tokens) < block_size + 2:
        raise TrainError(
            f"text dataset: {path} has {len(text)} characters, too few for block_size "
            f"{block_size} (need at least {block_size + 2} for training)"
        )
    stride = max(1, block_size // 4)
    train = TokenWindows(train_tokens, block_size, stride)
    evals = TokenWindows(tokens[len(tokens) - n_eval :], block_size, block_size) if n_eval else None
    return DataBundle("text", str(path), "lm", train, evals, (block_size,), len(vocab), vocab)


# ---------------------------------------------------------------------------- synthetic


def load_synthetic(cfg: TrainConfig) -> DataBundle:
    """Seeded random data: images of ``synthetic_shape``, or tokens for language models."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n, classes = cfg.synthetic_samples, cfg.synthetic_classes
    n_eval = max(1, n // 8)
    if cfg.model in SEQUENCE_MODELS:
        tokens = torch.randint(0, classes, ((n + n_eval) * cfg.block_size + 1,), generator=gen)
        split = n * cfg.block_size
        train = TokenWindows(tokens[: split + 1], cfg.block_size, cfg.block_size)
        evals = TokenWindows(tokens[split:], cfg.block_size, cfg.block_size)
        vocab = [chr(ord("a") + i % 26) for i in range(classes)]
        return DataBundle(
            "synthetic", "synthetic", "lm", train, evals, (cfg.block_size,), classes, vocab
        )
    shape = tuple(cfg.synthetic_shape)
    if len(shape) == 1:
        shape = (1, 1, shape[0])
    x = torch.randn((n + n_eval, *shape), generator=gen)
    y = torch.randint(0, classes, (n + n_eval,), generator=gen)
    return DataBundle(
        "synthetic",
        "synthetic",
        "classify",
        ArrayDataset(x[:n], y[:n]),
        ArrayDataset(x[n:], y[n:]),
        shape,
        classes,
    )


def describe(bundle: DataBundle) -> str:
    n_eval = len(bundle.eval) if bundle.eval is not None else 0
    what = f"vocab {bundle.num_classes}" if bundle.task == "lm" else f"{bundle.num_classes} classes"
    return (
        f"{bundle.name} from {bundle.source}: {len(bundle.train)} train / {n_eval} eval samples, "
        f"shape {list(bundle.input_shape)}, {what}"
    )


__all__ = [
    "EMBEDDED_DIGITS",
    "EMBEDDED_TEXT",
    "MAX_DATASET_VALUES",
    "DataBundle",
    "ResumableSampler",
    "ShardSampler",
    "batch_collate",
    "describe",
    "load_data",
    "resolve_source",
]
