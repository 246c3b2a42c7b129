"""benchmarks/publish_images.py's stand-in torch release: a relabelled wheel says the new
version everywhere pip and torch read it, keeps every other file's bytes, and its RECORD
matches what it holds."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from benchmarks.publish_images import relabel_torch

LIB = bytes(range(256)) * 64  # a binary that must come through unchanged


def _wheel(folder: Path) -> Path:
    path = folder / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("torch/__init__.py", "from .version import __version__\n")
        whl.writestr("torch/version.py", "__version__ = '2.13.0'\ncuda = '13.0'\n")
        whl.writestr("torch/lib/libtorch_cuda.so", LIB)
        whl.writestr("torch-2.13.0.dist-info/METADATA",
                     "Metadata-Version: 2.4\nName: torch\nVersion: 2.13.0\n"
                     "Requires-Dist: nvidia-cublas==13.1.1.3\n")  # fmt: skip
        whl.writestr("torch-2.13.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
        whl.writestr("torch-2.13.0.dist-info/RECORD", "stale\n")
    return path


def test_relabelled_wheel_says_the_new_version_and_keeps_the_binaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = relabel_torch(_wheel(tmp_path), "2.13.1", out)
    assert target.name == "torch-2.13.1-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(target) as whl:
        names = set(whl.namelist())
        assert not any(n.startswith("torch-2.13.0.dist-info/") for n in names)
        metadata = whl.read("torch-2.13.1.dist-info/METADATA").decode()
        assert "Version: 2.13.1\n" in metadata
        assert "nvidia-cublas==13.1.1.3" in metadata  # the nvidia pins stay
        assert whl.read("torch/version.py") == b"__version__ = '2.13.1'\ncuda = '13.0'\n"
        assert whl.read("torch/lib/libtorch_cuda.so") == LIB
        rows = whl.read("torch-2.13.1.dist-info/RECORD").decode().splitlines()
        recorded = {r.split(",")[0] for r in rows}
        assert recorded == names
        for row in rows:
            name, digest, size = row.split(",")
            if name.endswith("RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = whl.read(name)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == f"sha256={want.decode()}" and int(size) == len(data)
