"""Dataset readers on real files, and their error messages through the CLI."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from aibuild.errors import TrainError
from aibuild.train.config import TrainConfig
from aibuild.train.data import (
    EMBEDDED_DIGITS,
    load_cifar10,
    load_data,
    load_imagefolder,
    load_mnist,
    load_text,
)
from aibuild.train.formats import decode_png, decode_pnm, read_idx


def test_embedded_digits_are_idx_and_licensed() -> None:
    bundle = load_mnist(EMBEDDED_DIGITS)
    assert len(bundle.train) == 1497
    assert bundle.eval is not None and len(bundle.eval) == 300
    assert bundle.input_shape == (1, 8, 8)
    assert bundle.num_classes == 10
    assert (EMBEDDED_DIGITS.parent / "LICENSE").read_text().count("CC BY 4.0") >= 1
    assert (EMBEDDED_DIGITS.parent / "README.md").is_file()


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_raw_and_gz(
    tmp_path: Path, make_mnist: Callable[..., Path], compress: bool
) -> None:
    root = make_mnist(tmp_path / "m", n_train=12, n_test=4, compress=compress)
    bundle = load_mnist(root)
    assert bundle.input_shape == (1, 28, 28)
    x, y = bundle.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert int(y) == 3  # the generator's label of sample 0
    # standardised with the training statistics
    assert bundle.train.inputs.mean().abs() < 1e-4  # type: ignore[union-attr]


def test_idx_truncated_and_bad_magic(tmp_path: Path, make_mnist: Callable[..., Path]) -> None:
    root = make_mnist(tmp_path / "m", n_train=4, n_test=2, compress=False)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(
        TrainError, match=r"header says 4x28x28 = 3136 bytes of data, the file has 3036"
    ):
        read_idx(images)
    images.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(TrainError, match="not an IDX file"):
        read_idx(images)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")[:-6])
    with pytest.raises(TrainError, match="cannot read it as an IDX file"):
        read_idx(gz)


def test_mnist_label_count_must_match(tmp_path: Path, make_mnist: Callable[..., Path]) -> None:
    root = make_mnist(tmp_path / "m", n_train=8, n_test=4, compress=False)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")
    with pytest.raises(TrainError, match="3 labels for 4 images"):
        load_mnist(root)


@pytest.mark.parametrize("use_numpy", [True, False])
def test_cifar10_batches(tmp_path: Path, make_cifar: Callable[..., Path], use_numpy: bool) -> None:
    root = make_cifar(tmp_path / "cifar-10-batches-py", per_batch=6, batches=2, use_numpy=use_numpy)
    bundle = load_cifar10(tmp_path)  # finds the cifar-10-batches-py sub-directory
    assert len(bundle.train) == 12 and bundle.eval is not None and len(bundle.eval) == 6
    assert bundle.input_shape == (3, 32, 32)
    assert str(root) == bundle.source


def test_cifar10_refuses_foreign_pickles(tmp_path: Path, make_cifar: Callable[..., Path]) -> None:
    root = make_cifar(tmp_path / "c", per_batch=2, batches=1)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}))
    with pytest.raises(TrainError, match=r"refusing to load builtins.print"):
        load_cifar10(root)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": b"\x00" * 100, b"labels": [1]}))
    with pytest.raises(TrainError, match="100 data bytes for 1 labels"):
        load_cifar10(root)


def test_png_decoder_all_filters(png: Callable[..., bytes]) -> None:
    h, w = 7, 5
    rgb = [
        [[(x * 40 + y * 9) % 256, (y * 50 + 3) % 256, (x * y * 11) % 256] for x in range(w)]
        for y in range(h)
    ]
    img = decode_png(png(rgb))
    assert img.shape == (3, h, w)
    assert img.permute(1, 2, 0).tolist() == rgb
    grey = [[[(x + 1) * (y + 2) % 256] for x in range(w)] for y in range(h)]
    assert decode_png(png(grey)).shape == (1, h, w)
    assert decode_png(png(grey))[0].tolist() == [[p[0] for p in row] for row in grey]
    with pytest.raises(TrainError, match="not a PNG"):
        decode_png(b"GIF89a")


def test_pnm_decoder() -> None:
    p5 = b"P5\n# a comment\n3 2\n255\n" + bytes([0, 10, 20, 30, 40, 50])
    assert decode_pnm(p5)[0].tolist() == [[0, 10, 20], [30, 40, 50]]
    p3 = b"P3 1 1 15 15 0 15"
    assert decode_pnm(p3)[:, 0, 0].tolist() == [255, 0, 255]
    with pytest.raises(TrainError, match="truncated"):
        decode_pnm(b"P5 4 4 255\n" + bytes(3))


def test_imagefolder(tmp_path: Path, png: Callable[..., bytes]) -> None:
    for split in ("train", "val"):
        for k, name in enumerate(["cat", "dog"]):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(3):
                px = [[[(k * 120 + i + x) % 256] * 3 for x in range(6)] for _ in range(6)]
                (d / f"{i}.png").write_bytes(png(px))
            (d / "odd.pgm").write_bytes(b"P5 8 8 255\n" + bytes(range(64)))  # resized to 6x6
            torch.save(torch.rand(3, 6, 6), d / "t.pt")
    bundle = load_imagefolder(tmp_path, 0.1)
    assert bundle.input_shape == (3, 6, 6)
    assert bundle.num_classes == 2
    assert len(bundle.train) == 10 and bundle.eval is not None and len(bundle.eval) == 10
    (tmp_path / "train" / "cat" / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(TrainError, match=r"photo.jpg: only .png, .pgm, .ppm, .pnm, .pt"):
        load_imagefolder(tmp_path, 0.1)


def test_text(tmp_path: Path) -> None:
    f = tmp_path / "input.txt"
    f.write_text("hello world, " * 40, encoding="utf-8")
    bundle = load_text(tmp_path, block_size=16, eval_fraction=0.1)
    x, y = bundle.train[1]
    assert x.shape == (16,) and torch.equal(x[1:], y[:-1])
    assert (
        bundle.vocab is not None
        and "".join(bundle.vocab[i] for i in x.tolist()) in "hello world, " * 40
    )
    f.write_bytes(b"caf\xe9")
    with pytest.raises(TrainError, match="not UTF-8"):
        load_text(f, 16, 0.1)


def test_model_dataset_mismatch_is_clear() -> None:
    with pytest.raises(TrainError, match="model 'cnn' classifies images"):
        load_data(TrainConfig(model="cnn", dataset="text", block_size=8))
    with pytest.raises(TrainError, match="is a language model"):
        load_data(TrainConfig(model="transformer", dataset="mnist"))


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_dataset_errors(
    tmp_path: Path, train_cli: Callable[..., Result], make_mnist: Callable[..., Path]
) -> None:
    out = str(tmp_path / "out")
    line = _one_error_line(
        train_cli("--dataset", "mnist", "--data", str(tmp_path / "none"), "--output", out)
    )
    assert (
        line == f"mnist dataset: directory {tmp_path / 'none'} does not exist; expected "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (each raw or .gz)"
    )

    root = make_mnist(tmp_path / "m", n_train=4, n_test=2)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    line = _one_error_line(train_cli("--dataset", "mnist", "--data", str(root), "--output", out))
    assert line == f"mnist dataset: missing in {root}: t10k-labels-idx1-ubyte[.gz]"

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    line = _one_error_line(
        train_cli("--model", "transformer", "--dataset", "text", "--data", str(empty))
    )
    assert line == f"text dataset: {empty} is empty"

    line = _one_error_line(train_cli("--dataset", "cifar10", "--output", out))
    assert line.startswith("dataset 'cifar10' needs its files: pass --data DIR")
    assert "data_batch_1 .. data_batch_5 and test_batch" in line
    assert not Path(out).exists()


def test_malformed_idx_in_a_real_process(tmp_path: Path, make_mnist: Callable[..., Path]) -> None:
    """Through the console entry point: one line on stderr, exit 1, no traceback."""
    root = make_mnist(tmp_path / "m", n_train=4, n_test=2, compress=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:50])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aibuild",
            "train",
            "--data",
            str(root),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"{path}: malformed IDX file: its header says 4x28x28 = 3136 bytes of data, the file has 34"
    )
