"""Datasets: readers for standard on-disk formats, held in memory as tensors.

Formats (``training.dataset``):

- ``mnist``: the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or ``.gz``.
  The embedded default (``digits/``) is stored in this format.
- ``cifar10``: the python pickle batches (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``), in the directory or its ``cifar-10-batches-py/``. Read with a
  restricted unpickler that understands numpy's array pickles without numpy
  (and refuses every other object, so a hostile pickle cannot run code).
- ``imagefolder``: one sub-directory per class (``train/`` and ``val/``/``test/``
  splits, or classes directly, split by ``eval_fraction``). Without PIL only
  these files are read: PNG (8-bit, non-interlaced; decoded with zlib),
  PGM/PPM/PNM (binary or ASCII), and ``.pt`` tensors (``[C,H,W]`` or ``[H,W]``).
  Images are resized to the first image's size.
- ``text``: a UTF-8 file (or a directory with ``input.txt``), character level;
  the last ``eval_fraction`` is held out.
- ``synthetic``: seeded random tensors of ``synthetic_shape`` (benchmarks).

Nothing is ever downloaded. A missing or malformed dataset raises ``TrainError``
naming the files that were expected and where.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from aibuild.errors import TrainError
from aibuild.train.config import TrainConfig

EMBEDDED_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED_DIGITS = EMBEDDED_DIR / "digits"
EMBEDDED_TEXT = EMBEDDED_DIR / "text" / "macbeth.txt"

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


def read_idx(path: Path) -> tuple[tuple[int, ...], bytes]:
    """The dims and raw bytes of an unsigned-byte IDX file (raw or gzip)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise TrainError(f"{path}: cannot read it as an IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TrainError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != 0x08:
        raise TrainError(
            f"{path}: IDX data type 0x{raw[2]:02x} is not supported (need 0x08, ubyte)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise TrainError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = prod(dims)
    if len(raw) - header != expected:
        raise TrainError(
            f"{path}: malformed IDX file: its header says {'x'.join(map(str, dims))} = "
            f"{expected} bytes of data, the file has {len(raw) - header}"
        )
    return tuple(dims), raw[header:]


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


class _NdArray:
    """Stands in for numpy.ndarray while unpickling: keeps shape, dtype and raw bytes."""

    def __init__(self, *args: Any) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: _DType | None = None
        self.raw: bytes = b""

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, raw = state
        if fortran:
            raise pickle.UnpicklingError("Fortran-ordered arrays are not supported")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("object arrays are not supported")
        self.shape, self.dtype, self.raw = tuple(shape), dtype, bytes(raw)

    def to_tensor(self) -> torch.Tensor:
        assert self.dtype is not None
        dtype = self.dtype.torch_dtype()
        if self.dtype.byteorder == ">":
            raise pickle.UnpicklingError("big-endian arrays are not supported")
        if not self.raw:
            return torch.empty(self.shape, dtype=dtype)
        return torch.frombuffer(bytearray(self.raw), dtype=dtype).reshape(self.shape)


class _DType:
    """Stands in for numpy.dtype while unpickling."""

    _MAP: ClassVar[dict[str, torch.dtype]] = {
        "u1": torch.uint8,
        "i1": torch.int8,
        "i2": torch.int16,
        "i4": torch.int32,
        "i8": torch.int64,
        "f4": torch.float32,
        "f8": torch.float64,
        "b1": torch.bool,
    }

    def __init__(self, code: str, *args: Any) -> None:
        self.code = code
        self.byteorder = "|"

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.byteorder = state[1] if len(state) > 1 and isinstance(state[1], str) else "|"

    def torch_dtype(self) -> torch.dtype:
        if self.code not in self._MAP:
            raise pickle.UnpicklingError(f"array dtype {self.code!r} is not supported")
        return self._MAP[self.code]


def _reconstruct(*args: Any) -> _NdArray:
    return _NdArray()


def _scalar(dtype: _DType, raw: bytes) -> int | float:
    value = torch.frombuffer(bytearray(raw), dtype=dtype.torch_dtype())
    result: int | float = value.item()
    return result


class _SafeUnpickler(pickle.Unpickler):
    """Allows numpy arrays/scalars (as stand-ins) and latin-1 bytes; refuses anything else."""

    _ALLOWED: dict[tuple[str, str], Any] = {  # noqa: RUF012
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy", "ndarray"): _NdArray,
        ("numpy", "dtype"): _DType,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _as_tensor(value: Any, what: str, path: Path) -> torch.Tensor:
    if isinstance(value, _NdArray):
        return value.to_tensor()
    if isinstance(value, (bytes, bytearray)):
        return torch.frombuffer(bytearray(value), dtype=torch.uint8)
    if isinstance(value, list):
        return torch.tensor(value)
    raise TrainError(f"{path}: {what} has an unexpected type {type(value).__name__}")


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as fh:
            batch = _SafeUnpickler(fh, encoding="bytes").load()
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
    ) as exc:
        raise TrainError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise TrainError(f"{path}: not a CIFAR-10 python batch (no dict inside)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise TrainError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries")
    x = _as_tensor(data, "data", path).to(torch.uint8)
    y = _as_tensor(labels, "labels", path).long().flatten()
    if x.numel() != len(y) * 3072:
        raise TrainError(
            f"{path}: {x.numel()} data bytes for {len(y)} labels (need 3072 per image)"
        )
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


def decode_png(data: bytes, where: str = "<png>") -> torch.Tensor:
    """An 8-bit, non-interlaced PNG (grey, grey+alpha, RGB, RGBA, palette) -> uint8 [C,H,W]."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise TrainError(f"{where}: not a PNG file")
    pos, idat, palette = 8, bytearray(), b""
    width = height = depth = ctype = interlace = -1
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise TrainError(f"{where}: truncated PNG chunk {kind!r}")
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    if width <= 0 or not idat:
        raise TrainError(f"{where}: PNG without IHDR or image data")
    if depth != 8 or interlace != 0 or ctype not in (0, 2, 3, 4, 6):
        raise TrainError(
            f"{where}: only 8-bit non-interlaced PNGs are supported (bit depth {depth}, "
            f"colour type {ctype}, interlace {interlace})"
        )
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    try:
        raw = zlib.decompress(bytes(idat))
    except zlib.error as exc:
        raise TrainError(f"{where}: corrupt PNG data ({exc})") from None
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise TrainError(
            f"{where}: PNG data has {len(raw)} bytes, expected {height * (stride + 1)}"
        )
    out = bytearray(height * stride)
    prev = bytearray(stride)
    bpp = channels
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                row[i] = (row[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 0xFF
        elif ftype != 0:
            raise TrainError(f"{where}: bad PNG filter type {ftype} on row {y}")
        out[y * stride : (y + 1) * stride] = row
        prev = row
    img = torch.frombuffer(out, dtype=torch.uint8).view(height, width, channels)
    if ctype == 3:
        if len(palette) < 3:
            raise TrainError(f"{where}: palette PNG without a palette")
        table = torch.frombuffer(bytearray(palette), dtype=torch.uint8).view(-1, 3)
        img = table[img[..., 0].long()]
    elif ctype in (4, 6):
        img = img[..., :-1]  # drop alpha
    return img.permute(2, 0, 1).contiguous()


def decode_pnm(data: bytes, where: str = "<pnm>") -> torch.Tensor:
    """A PGM/PPM (P2, P3, P5, P6; maxval up to 65535) -> uint8 [C,H,W]."""
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise TrainError(f"{where}: not a PGM/PPM file (magic {magic!r})")
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise TrainError(f"{where}: malformed PGM/PPM header")
        fields.append(int(data[start:pos]))
    width, height, maxval = fields
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        pos += 1  # the single whitespace after maxval
        size = 2 if maxval > 255 else 1
        body = data[pos : pos + count * size]
        if len(body) != count * size:
            raise TrainError(f"{where}: truncated PGM/PPM data")
        if size == 1:
            values = torch.frombuffer(bytearray(body), dtype=torch.uint8).long()
        else:
            values = torch.tensor(struct.unpack(f">{count}H", body), dtype=torch.long)
    else:
        words = data[pos:].split()
        if len(words) < count:
            raise TrainError(f"{where}: truncated PGM/PPM data")
        values = torch.tensor([int(w) for w in words[:count]], dtype=torch.long)
    if maxval != 255:
        values = values * 255 // max(maxval, 1)
    return values.to(torch.uint8).view(height, width, channels).permute(2, 0, 1).contiguous()


def read_image(path: Path) -> torch.Tensor:
    """One image file -> uint8 [C,H,W] (C = 1 or 3)."""
    suffix = path.suffix.lower()
    if suffix == ".pt":
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainError(f"{path}: cannot load the tensor ({exc})") from None
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise TrainError(f"{path}: expected a [C,H,W] or [H,W] tensor")
        if t.dim() == 2:
            t = t[None]
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        img = t.to(torch.uint8)
    else:
        data = path.read_bytes()
        img = decode_png(data, str(path)) if suffix == ".png" else decode_pnm(data, str(path))
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
    images = [read_image(f) for f, _ in train_items + eval_items]
    channels = max(img.shape[0] for img in images)
    size = tuple(images[0].shape[1:])
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
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(
            f"text dataset: {path} is not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    if not text.strip():
        raise TrainError(f"text dataset: {path} is empty")
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    tokens = torch.tensor([index[ch] for ch in text], dtype=torch.long)
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
    "DataBundle",
    "batch_collate",
    "decode_png",
    "decode_pnm",
    "describe",
    "load_data",
    "read_idx",
    "resolve_source",
]
