"""Hostile input to ``aibuild train``: one error line, exit 1, bounded memory and time.

Every CLI case runs the real command in a child process under an address-space
limit (RLIMIT_AS), and checks: exit code 1, exactly one line on stderr besides
``warning:`` lines, no traceback, peak RSS under a bound, a finish well inside
the timeout, and no ``.tmp`` file left anywhere under the test's directory.
The decoders, the YAML bound and the checkpoint checks also get property tests
(hypothesis, in-process): whatever the bytes, a reader returns a bounded result
or raises TrainError, never another exception and never a huge allocation.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gzip
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aibuild.errors import TrainError
from aibuild.train.checkpoint import CorruptCheckpoint, atomic_save, load_checkpoint
from aibuild.train.cli import MAX_YAML_NODES, read_training_source
from aibuild.train.config import MAX_SHOWN_CHARS
from aibuild.train.data import load_cifar10
from aibuild.train.formats import (
    MAX_CLASSES,
    MAX_IMAGE_PIXELS,
    decode_png,
    decode_pnm,
    load_pickle,
    read_idx,
)
from tests.train.conftest import png_bytes, write_idx

ADDRESS_SPACE = 2 << 30  # RLIMIT_AS of each child: a torch CPU process trains in under 1 GiB
PEAK_RSS = 1 << 30  # what a child may really use
TIMEOUT_S = 120  # generous: a child finishes in seconds; a hang or a 2 GB job does not
TRAIN = ["--model", "mlp", "--epochs", "1", "--batch-size", "8"]
SYNTHETIC = [
    "--dataset",
    "synthetic",
    "--set",
    "synthetic_samples=32",
    "--set",
    "synthetic_shape=[1,8,8]",
]


@dataclass
class Child:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    wall_s: float

    def errors(self) -> list[str]:
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith("warning:")
        ]

    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("warning:")]


def _drop_dac_override() -> None:
    """As root, give up CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (from the bounding set, so
    the exec'd child has neither): file modes then bind root as they bind anyone."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_train(
    cwd: Path,
    *args: str,
    file_size: int | None = None,
    read_only: bool = False,
) -> Child:
    """``python -m aibuild train ARGS`` in a child under RLIMIT_AS; its own peak RSS."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
        if file_size is not None:  # writes past this fail (EFBIG), as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if read_only:
            _drop_dac_override()

    out, err = cwd / ".child-stdout", cwd / ".child-stderr"
    start = time.monotonic()
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aibuild", "train", *args],
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            preexec_fn=limits,
        )
        timer = threading.Timer(TIMEOUT_S, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    child = Child(
        proc.returncode,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
        usage.ru_maxrss * 1024,
        wall,
    )
    out.unlink()
    err.unlink()
    assert wall < TIMEOUT_S, f"killed after {TIMEOUT_S}s"
    return child


def assert_refused(child: Child, root: Path, *expected: str) -> str:
    """Exit 1, one error line (holding each of ``expected``), no traceback, bounded
    memory, and no temporary file left under ``root``."""
    assert child.returncode == 1, (child.returncode, child.stderr[-2000:])
    assert "Traceback" not in child.stderr, child.stderr[-3000:]
    errors = child.errors()
    assert len(errors) == 1, errors
    for text in expected:
        assert text in errors[0], errors[0]
    assert child.peak_rss < PEAK_RSS, f"peak RSS {child.peak_rss:,} bytes"
    assert not list(root.rglob("*.tmp")), list(root.rglob("*.tmp"))
    return errors[0]


# ---------------------------------------------------------------------------- datasets


def _mnist(root: Path, n: int = 16, size: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        pixels = bytes((i * 7) % 256 for i in range(n * size * size))
        write_idx(root / f"{split}-images-idx3-ubyte", (n, size, size), pixels)
        write_idx(root / f"{split}-labels-idx1-ubyte", (n,), bytes(i % 10 for i in range(n)))
    return root


def _gzip_bomb(header: bytes, expanded: int) -> bytes:
    """A multi-member gzip of ``header`` then zeros, ``expanded`` bytes in all, made fast:
    one 16 MiB member of zeros compressed once and repeated."""
    member = 16 << 20
    first = gzip.compress(header + bytes(member - len(header)), mtime=0)
    rest = gzip.compress(bytes(member), mtime=0)
    return first + rest * (expanded // member - 1)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(ihdr: bytes, idat: bytes, plte: bytes | None = None) -> bytes:
    chunks = [_png_chunk(b"IHDR", ihdr)]
    if plte is not None:
        chunks.append(_png_chunk(b"PLTE", plte))
    chunks += [_png_chunk(b"IDAT", idat), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _imagefolder(root: Path, first: bytes, suffix: str = ".png", others: int = 3) -> Path:
    """Two classes; ``first`` is the first image of the first class, the rest are 4x4."""
    small = png_bytes([[[(x * 40 + y) % 256] for x in range(4)] for y in range(4)])
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(others):
            (root / f"c{k}" / f"{i + 1:03d}.png").write_bytes(small)
    (root / "c0" / f"000{suffix}").write_bytes(first)
    return root


def _cifar(root: Path, test_batch: dict[bytes, Any]) -> Path:
    root.mkdir(parents=True)
    good = {b"labels": [1, 2], b"data": bytes(2 * 3072)}
    (root / "data_batch_1").write_bytes(pickle.dumps(good, protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=2))
    return root


def _grey_png(width: int, height: int) -> bytes:
    """A grey PNG of zeros, rows unfiltered: large and quick to make and decode."""
    raw = bytes(height * (width + 1))
    return _png(struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0), zlib.compress(raw, 1))


DATA_CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {}


def data_case(*expected: str) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    def register(make: Callable[[Path], Path]) -> Callable[[Path], Path]:
        DATA_CASES[make.__name__] = (make, expected)
        return make

    return register


def _mnist_without_images(tmp: Path, split: str) -> Path:
    root = _mnist(tmp / "m")
    write_idx(root / f"{split}-images-idx3-ubyte", (0, 8, 8), b"")
    write_idx(root / f"{split}-labels-idx1-ubyte", (0,), b"")
    return root


@data_case("holds no images")
def idx_zero_images(tmp: Path) -> Path:
    return _mnist_without_images(tmp, "train")


@data_case("holds no images")
def idx_zero_test_images(tmp: Path) -> Path:
    return _mnist_without_images(tmp, "t10k")


@data_case("malformed IDX file", "the file has more")
def idx_gzip_bomb_past_its_header(tmp: Path) -> Path:
    """2 MB of gzip expanding to 2 GiB behind a header that says 16x8x8."""
    root = _mnist(tmp / "m")
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 16, 8, 8)
    (root / "train-images-idx3-ubyte.gz").write_bytes(_gzip_bomb(header, 2 << 30))
    return root


@data_case("more than the limit of 1,073,741,824")
def idx_gzip_header_claims_too_much(tmp: Path) -> Path:
    root = _mnist(tmp / "m")
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 3_000_000, 28, 28)  # 2.3 GB declared
    (root / "train-images-idx3-ubyte.gz").write_bytes(_gzip_bomb(header, 32 << 20))
    return root


@data_case("IHDR chunk of 5 bytes")
def png_short_ihdr(tmp: Path) -> Path:
    return _imagefolder(tmp / "f", _png(b"\x00\x00\x00\x04\x00", zlib.compress(bytes(20))))


@data_case("palette index 7 out of range", "2 colours")
def png_palette_index_out_of_range(tmp: Path) -> Path:
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 3, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes([0, 1, 7, 1]) for _ in range(4))
    return _imagefolder(tmp / "f", _png(ihdr, zlib.compress(rows), plte=bytes(6)))


@data_case("30000x30000 = 900,000,000 pixels", "limit of 16,777,216")
def png_declares_30000x30000(tmp: Path) -> Path:
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 6, 0, 0, 0)
    return _imagefolder(tmp / "f", _png(ihdr, zlib.compress(bytes(1000))))


@data_case("more than the limit of 2,147,483,648", "make the images smaller")
def images_resized_to_a_huge_first_image(tmp: Path) -> Path:
    """Each image is small on disk; resized to the first one's 4096x4096 they need 8.6 GB."""
    return _imagefolder(tmp / "f", _grey_png(4096, 4096), others=70)


@data_case("labels must be a flat list", "found [1, 2]")
def cifar_ragged_labels(tmp: Path) -> Path:
    return _cifar(tmp / "c", {b"labels": [[1, 2], 3], b"data": bytes(2 * 3072)})


@data_case("labels must be a flat list", "found -1")
def cifar_negative_label(tmp: Path) -> Path:
    return _cifar(tmp / "c", {b"labels": [0, -1], b"data": bytes(2 * 3072)})


@data_case("labels must be a flat list", "found 1000000000")
def cifar_label_10_to_the_9(tmp: Path) -> Path:
    return _cifar(tmp / "c", {b"labels": [0, 10**9], b"data": bytes(2 * 3072)})


@data_case("not a CIFAR-10 python batch", "1000000000000 bytes")
def pickle_claims_10_to_the_12_bytes(tmp: Path) -> Path:
    root = _cifar(tmp / "c", {b"labels": [0], b"data": bytes(3072)})
    claim = b"\x80\x04\x8e" + struct.pack("<Q", 10**12) + b"tiny" + b"."  # BINBYTES8
    (root / "test_batch").write_bytes(claim)
    return root


@data_case("not a CIFAR-10 python batch", "memo index")
def pickle_memo_index_4_billion(tmp: Path) -> Path:
    root = _cifar(tmp / "c", {b"labels": [0], b"data": bytes(3072)})
    (root / "test_batch").write_bytes(b"\x80\x02]r\xff\xff\xff\xff.")  # LONG_BINPUT 2**32-1
    return root


@data_case("not a CIFAR-10 python batch", "needs 1,000,000,000,000 bytes, it holds 0")
def pickle_array_claims_a_terabyte(tmp: Path) -> Path:
    """A numpy array pickle (hand-assembled: no numpy here) of shape (10**12,), no bytes."""
    root = _cifar(tmp / "c", {b"labels": [0], b"data": bytes(3072)})
    dtype = b"cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"  # dtype('u1', False, True)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
        + b"(K\x01\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85"  # state: 1, shape (10**12,),
        + dtype
        + b"\x89C\x00tb"  # ... dtype, not Fortran, b""; BUILD
    )
    batch = b"\x80\x02}(C\x04data" + array + b"C\x06labels]K\x00au."
    (root / "test_batch").write_bytes(batch)
    return root


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_hostile_dataset_is_one_line(tmp_path: Path, case: str) -> None:
    make, expected = DATA_CASES[case]
    data = make(tmp_path)
    child = run_train(tmp_path, *TRAIN, "--data", str(data), "--output", str(tmp_path / "out"))
    assert_refused(child, tmp_path, *expected)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # refused before training


# ---------------------------------------------------------------------------- outputs


def test_output_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a directory")
    child = run_train(tmp_path, *TRAIN, *SYNTHETIC, "--output", str(tmp_path / "out"))
    assert_refused(child, tmp_path, f"cannot write to {tmp_path / 'out'}: it is a file")


def test_read_only_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    try:
        child = run_train(tmp_path, *TRAIN, *SYNTHETIC, "--output", str(out), read_only=True)
    finally:
        out.chmod(0o755)
    assert_refused(child, tmp_path, f"cannot write to {out}: Permission denied")
    assert "loss" not in child.stdout  # refused before any training


def test_checkpoints_that_is_a_file_fails_before_training(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").write_text("in the way")
    child = run_train(tmp_path, *TRAIN, *SYNTHETIC, "--output", str(out))
    assert_refused(child, tmp_path, "checkpoints: it is a file, not a directory")
    assert "loss" not in child.stdout and not (out / "metrics.jsonl").exists()


@functools.cache
def _trained(base: Path) -> Path:
    """One step of AdamW training on synthetic data: its output directory (made once)."""
    out = base / "trained"
    child = run_train(
        base, *TRAIN, *SYNTHETIC, "--epochs", "2", "--max-steps", "1", "--output", str(out)
    )
    assert child.returncode == 0, child.stderr
    return out


@pytest.fixture
def trained(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A copy of a run that saved ckpt-00000001.pt, for this test to spoil."""
    copy = tmp_path / "out"
    shutil.copytree(_trained(tmp_path_factory.getbasetemp()), copy)
    return copy


def _ckpt(out: Path, step: int = 1) -> Path:
    return out / "checkpoints" / f"ckpt-{step:08d}.pt"


def run_again(tmp_path: Path, trained: Path, *args: str, file_size: int | None = None) -> Child:
    """The trained run's command again (two epochs) with ``args``, e.g. a --resume."""
    return run_train(
        tmp_path,
        *TRAIN,
        *SYNTHETIC,
        "--epochs",
        "2",
        "--output",
        str(trained),
        *args,
        file_size=file_size,
    )


def test_full_disk_during_a_checkpoint_keeps_the_previous(tmp_path: Path, trained: Path) -> None:
    before = _ckpt(trained).read_bytes()
    # the checkpoint is larger than 16 KiB: its write fails half-way
    child = run_again(tmp_path, trained, "--max-steps", "2", "--resume", "auto", file_size=16 << 10)
    line = assert_refused(child, tmp_path, "checkpoint not saved: cannot write")
    assert line.endswith(f"File too large; the previous checkpoint {_ckpt(trained)} is intact")
    assert _ckpt(trained).read_bytes() == before
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [_ckpt(trained).name]


def test_enospc_in_a_checkpoint_write_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    target = tmp_path / "ckpt-00000001.pt"
    atomic_save({"model": {}, "step": 1}, target)
    before = target.read_bytes()

    def full(obj: Any, fh: Any) -> None:
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainError, match=f"cannot write {target}: No space left on device$"):
        atomic_save({"model": {}, "step": 2}, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == [target.name]


# ---------------------------------------------------------------------------- checkpoints


def _spoil(path: Path, **changes: Any) -> None:
    state = torch.load(path, weights_only=True)
    state.update(changes)
    torch.save(state, path)


def test_corrupt_newest_checkpoint_falls_back_to_an_intact_one(
    tmp_path: Path, trained: Path
) -> None:
    newest = _ckpt(trained, 5)
    newest.write_bytes(_ckpt(trained).read_bytes()[:100])  # truncated
    (trained / "checkpoints" / "ckpt-00000009.pt.tmp").write_bytes(b"half")  # never a candidate
    stale = trained / "checkpoints" / ".ckpt-00000007.pt.k2j4.tmp"  # a killed save's
    stale.write_bytes(b"half")
    child = run_again(tmp_path, trained, "--max-steps", "2", "--resume", "auto")
    assert child.returncode == 0, child.stderr
    assert child.errors() == []
    (warning,) = child.warnings()
    assert warning.startswith(f"warning: skipping checkpoint {newest}: ")
    assert len(warning) > len(f"warning: skipping checkpoint {newest}: ") + 5  # a reason
    assert f"resumed from {_ckpt(trained)} (step 1," in child.stdout
    assert not stale.exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": [1, 2, 3]}, "its model entry is not a mapping of tensors"),
        ({"optimizer": 7}, "its optimizer entry is not a mapping"),
        ({"step": -5}, "step is -5, not a count"),  # more: test_checkpoint_counters_are_checked
        ({"rng": {"torch": torch.zeros(3)}}, "malformed RNG state"),
    ],
    ids=["model-list", "optimizer-int", "step", "rng"],
)
def test_malformed_checkpoint_is_one_line(
    tmp_path: Path, trained: Path, changes: dict[str, Any], expected: str
) -> None:
    _spoil(_ckpt(trained), **changes)
    child = run_again(tmp_path, trained, "--resume", str(_ckpt(trained)))
    assert_refused(child, tmp_path, f"checkpoint {_ckpt(trained)} is unusable: {expected}")


def test_all_checkpoints_corrupt_under_resume_auto(tmp_path: Path, trained: Path) -> None:
    _spoil(_ckpt(trained), model=[1])
    child = run_again(tmp_path, trained, "--resume", "auto")
    assert_refused(child, tmp_path, "none of the 1 checkpoints", "can be loaded")
    assert len(child.warnings()) == 1


def test_adamw_checkpoint_resumed_with_sgd(tmp_path: Path, trained: Path) -> None:
    child = run_again(tmp_path, trained, "--optimizer", "sgd", "--resume", "auto")
    assert_refused(
        child,
        tmp_path,
        "holds 'adamw' optimizer state, but this run uses 'sgd'",
        "resume with --optimizer adamw",
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"batch_in_epoch": 10**18}, "at batch 1000000000000000000 of an epoch"),
        ({"epoch": 10**9}, "at epoch 1000000000, past this run's 2 epochs"),
    ],
    ids=["batch_in_epoch", "epoch"],
)
def test_resumed_counters_past_the_data_do_not_hang(
    tmp_path: Path, trained: Path, changes: dict[str, Any], expected: str
) -> None:
    _spoil(_ckpt(trained), **changes)
    child = run_again(tmp_path, trained, "--resume", "auto")
    assert_refused(child, tmp_path, expected)
    assert child.wall_s < 60


# ---------------------------------------------------------------------------- configs


def _laughs(levels: int, fan: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * fan)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ntraining:\n  model: *l{levels}\n"


def test_billion_laughs_config(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(_laughs(9))  # 10**9 strings once expanded
    child = run_train(tmp_path, "--config", str(config))
    line = assert_refused(child, tmp_path, "expands to more than 100,000 nodes")
    assert len(line) < 300


def test_self_referencing_alias_config(tmp_path: Path) -> None:
    config = tmp_path / "loop.yaml"
    config.write_text("training:\n  model: &a [*a]\n")
    assert_refused(run_train(tmp_path, "--config", str(config)), tmp_path, "refers to itself")


def test_deeply_nested_config(tmp_path: Path) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("training:\n  model: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert_refused(run_train(tmp_path, "--config", str(config)), tmp_path, "invalid YAML")


def test_set_alias_bomb(tmp_path: Path) -> None:
    parts = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    parts += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    child = run_train(tmp_path, "--set", "model={" + ", ".join(parts) + "}")
    assert_refused(child, tmp_path, "--set model: error: the YAML expands to more than")


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    child = run_train(tmp_path, "--set", "model=" + "x" * 100_000, "--set", "y" * 50_000 + "=1")
    assert child.returncode == 1 and "Traceback" not in child.stderr
    errors = child.errors()
    assert len(errors) == 2, errors  # one line per bad key
    assert all(len(line) < 4 * MAX_SHOWN_CHARS + 100 for line in errors), errors


# ---------------------------------------------------------------------------- properties

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)
CUTS = st.none() | st.integers(0, 400)
DIMS = st.integers(0, 2**32 - 1)


@FAST
@given(edits=EDITS, cut=CUTS, width=DIMS, height=DIMS, ctype=st.sampled_from([0, 2, 3, 4, 6]))
def test_png_decoder_is_bounded(
    edits: list[tuple[int, int]], cut: int | None, width: int, height: int, ctype: int
) -> None:
    pixels = [[[(x * 30 + y) % 256] for x in range(6)] for y in range(5)]
    base = bytearray(png_bytes(pixels))
    if width or height:  # claimed dimensions, colour type (the CRC is not checked)
        base[16:26] = struct.pack(">IIBB", width, height, 8, ctype)
    try:
        img = decode_png(_mutate(bytes(base), edits, cut))
    except TrainError:
        return
    assert img.shape[1] * img.shape[2] <= MAX_IMAGE_PIXELS


@FAST
@given(
    header=st.tuples(DIMS, DIMS, st.integers(0, 70000)),
    magic=st.sampled_from([b"P2", b"P3", b"P5", b"P6"]),
    body=st.binary(max_size=64) | st.text("0123456789 -x", max_size=64).map(str.encode),
)
def test_pnm_decoder_is_bounded(header: tuple[int, int, int], magic: bytes, body: bytes) -> None:
    data = magic + b" %d %d %d\n" % header + body
    try:
        img = decode_pnm(data)
    except TrainError:
        return
    assert img.shape[1] * img.shape[2] <= MAX_IMAGE_PIXELS


@FAST
@given(dims=st.lists(DIMS, min_size=1, max_size=4), extra=st.integers(-3, 3), gz=st.booleans())
def test_idx_reader_is_bounded(tmp_path: Path, dims: list[int], extra: int, gz: bool) -> None:
    header = struct.pack(f">BBBB{len(dims)}I", 0, 0, 8, len(dims), *dims)
    size = min(sum(dims), 4096) + extra
    raw = header + bytes(max(size, 0))
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    try:
        found, data = read_idx(path)
    except TrainError:
        return
    assert list(found) == dims and len(data) == len(raw) - len(header)


@FAST
@given(edits=EDITS, cut=st.none() | st.integers(0, 6300))
def test_cifar_unpickler_is_bounded(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    batch = {b"labels": [3, 4], b"data": bytes(range(256)) * 24}
    path = tmp_path / "test_batch"
    path.write_bytes(_mutate(pickle.dumps(batch, protocol=4), edits, cut))
    with contextlib.suppress(TrainError):
        load_pickle(path)


LABEL = st.integers(-(2**70), 2**70) | st.booleans() | st.floats() | st.text(max_size=3)
LABELS = st.lists(LABEL | st.lists(LABEL, max_size=3), min_size=1, max_size=4)


@FAST
@given(labels=LABELS)
def test_cifar_labels_are_bounded(tmp_path: Path, labels: list[Any]) -> None:
    root = tmp_path / "c"
    shutil.rmtree(root, ignore_errors=True)
    _cifar(root, {b"labels": labels, b"data": bytes(len(labels) * 3072)})
    try:
        bundle = load_cifar10(root)
    except TrainError:
        return
    assert bundle.num_classes <= MAX_CLASSES


@FAST
@given(fans=st.lists(st.integers(1, 12), min_size=1, max_size=9))
def test_yaml_expansion_is_bounded(tmp_path: Path, fans: list[int]) -> None:
    lines = ["a0: &a0 x"]
    sizes = [1]
    for i, fan in enumerate(fans, start=1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]")
        sizes.append(1 + fan * sizes[-1])
    # the root mapping: each key and value, then training: {model: *top}
    total = 1 + sum(1 + size for size in sizes) + 3 + sizes[-1]
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + f"\ntraining:\n  model: *a{len(fans)}\n")
    try:
        read_training_source(str(path))
    except TrainError as exc:
        assert total > MAX_YAML_NODES, total
        assert len(str(exc)) < 200
        return
    assert total <= MAX_YAML_NODES


COUNTS = (
    st.integers(-(2**64), 2**64) | st.booleans() | st.floats() | st.none() | st.text(max_size=4)
)


@FAST
@given(step=COUNTS, epoch=COUNTS, batch=COUNTS)
def test_checkpoint_counters_are_checked(tmp_path: Path, step: Any, epoch: Any, batch: Any) -> None:
    path = tmp_path / "ckpt-00000001.pt"
    torch.save(
        {"model": {"w": torch.zeros(1)}, "step": step, "epoch": epoch, "batch_in_epoch": batch},
        path,
    )
    try:
        state = load_checkpoint(path)
    except CorruptCheckpoint as exc:
        assert exc.reason
        return
    for key in ("step", "epoch", "batch_in_epoch"):
        assert type(state[key]) is int and state[key] >= 0
