"""Fixtures for the trainer's tests: real torch on CPU, real files, no mocks.

Datasets are generated in the standard on-disk formats (IDX, CIFAR pickles,
PNG/PGM folders, text) so the readers are tested on the bytes they meet in
the field. ``train_cli`` runs ``aibuild train`` in-process through the real
command group, as the console script does.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from aibuild.cli import cli

ENV_VARS = ("AIBUILD_PROFILE", "AIBUILD_DATA", "AIBUILD_OUTPUT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No inherited trainer variables; one CPU thread here and in subprocesses.

    One thread keeps these small models fast on a shared 2-core machine (two
    OpenMP threads spin against other load), and makes in-process and
    subprocess runs bit-comparable.
    """
    import torch

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # the default ./aibuild-output lands in the test's own dir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_cli() -> Callable[..., Result]:
    """Run ``aibuild train ARGS`` in-process; returns click's Result (stdout/stderr apart)."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(cli, ["train", *args], env=env, catch_exceptions=True)

    return run


def write_idx(path: Path, dims: tuple[int, ...], data: bytes, *, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    raw = header + data
    if compress:
        with gzip.GzipFile(path.with_name(path.name + ".gz"), "wb", mtime=0) as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def _pattern_images(n: int, h: int, w: int, classes: int, channels: int = 1) -> tuple[bytes, bytes]:
    """Learnable images: class k lights up band k; deterministic noise elsewhere."""
    pixels = bytearray()
    labels = bytearray()
    for i in range(n):
        k = (i * 7 + 3) % classes
        labels.append(k)
        for c in range(channels):
            for y in range(h):
                for x in range(w):
                    band = (x * classes) // w == k
                    noise = (i * 31 + c * 17 + y * 13 + x * 7) % 40
                    pixels.append(200 + noise // 2 if band else noise)
    return bytes(pixels), bytes(labels)


@pytest.fixture
def make_mnist() -> Callable[..., Path]:
    """Write MNIST-shaped IDX files (28x28 by default) into a directory."""

    def make(
        root: Path, n_train: int = 96, n_test: int = 32, size: int = 28, compress: bool = True
    ) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("t10k", n_test)):
            pixels, labels = _pattern_images(n, size, size, 10)
            write_idx(
                root / f"{split}-images-idx3-ubyte", (n, size, size), pixels, compress=compress
            )
            write_idx(root / f"{split}-labels-idx1-ubyte", (n,), labels, compress=compress)
        return root

    return make


@pytest.fixture
def make_cifar() -> Callable[..., Path]:
    """Write CIFAR-10 python batches (3x32x32) as the real ones are pickled.

    With ``use_numpy`` the data is a numpy uint8 array pickled with protocol 2, as
    in the published files; without, plain bytes (what a numpy-free writer makes).
    """

    def make(root: Path, per_batch: int = 20, batches: int = 2, use_numpy: bool = False) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        names = [f"data_batch_{i + 1}" for i in range(batches)] + ["test_batch"]
        for j, name in enumerate(names):
            pixels, labels = _pattern_images(per_batch, 32, 32, 10, channels=3)
            data: Any = pixels
            if use_numpy:
                np = pytest.importorskip("numpy")
                data = np.frombuffer(pixels, dtype=np.uint8).reshape(per_batch, 3072)
            batch = {b"batch_label": f"batch {j}".encode(), b"labels": list(labels), b"data": data}
            (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        return root

    return make


def png_bytes(pixels: list[list[list[int]]], filters: list[int] | None = None) -> bytes:
    """Encode [H][W][C] 8-bit pixels (C = 1 or 3) as a PNG, exercising filter types 0-4."""
    import zlib

    h, w, c = len(pixels), len(pixels[0]), len(pixels[0][0])
    ctype = {1: 0, 3: 2}[c]
    rows = [bytes(v for px in row for v in px) for row in pixels]
    filters = filters or [y % 5 for y in range(h)]
    out = bytearray()
    prev = bytes(w * c)
    for y, row in enumerate(rows):
        f = filters[y]
        enc = bytearray()
        for i, v in enumerate(row):
            a = row[i - c] if i >= c else 0
            b = prev[i]
            cc = prev[i - c] if i >= c else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) >> 1
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            enc.append((v - pred) & 0xFF)
        out += bytes([f]) + enc
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def png() -> Callable[..., bytes]:
    return png_bytes


def python() -> str:
    return sys.executable
