"""Layer compression that gives the same bytes on every machine: gzip or zstd.

The compressed bytes are a layer's registry digest, so they must not depend on the host.
The host's zlib does not qualify (Fedora's zlib-ng-compat writes other deflate bytes than
Debian's zlib), so both codecs come from pinned wheels that carry their own library:

- gzip: ``zlib-ng`` (PyPI ``zlib-ng``, pinned in pyproject.toml), level 6, a header with
  mtime 0 and no file name;
- zstd: ``zstandard`` (PyPI, pinned), level 3, always in zstd's multi-threaded mode: its
  output is the same for any number of worker threads (1 or 64), while the single-threaded
  mode (0 workers) writes other bytes. The frame records the content size, no checksum.

zstd layers get the OCI ``+zstd`` media type; Docker pulls them from 23.0 on (containerd
1.5+), older engines cannot. The default stays gzip while Docker 20.10 is common.

Several layers compress at once, up to the cores (``aibuild.oci.archive.BlobCache``): the
codecs release the GIL, so threads run in parallel.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from aibuild.errors import PublishError
from aibuild.oci.media import CHUNK, LAYER_GZIP, LAYER_OCI_ZSTD

GZIP = "gzip"
ZSTD = "zstd"
COMPRESSIONS = (GZIP, ZSTD)
DEFAULT_COMPRESSION = GZIP
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
# The Docker release from which `docker pull` reads zstd layers (moby 23.0, containerd 1.5).
ZSTD_MIN_DOCKER = (23, 0)

Progress = Callable[[int], None]  # called with the number of input bytes just compressed


def _nothing(_: int) -> None:
    pass


@dataclass(frozen=True)
class Codec:
    """One compression as the blob cache keys it: the name, level and library version (a
    new library release may write other bytes, so it starts a new cache index)."""

    name: str
    level: int
    library: str  # "zlib-ng 2.2.4", "zstandard 0.25.0 (libzstd 1.5.7)"
    media_type: str

    @property
    def key(self) -> str:
        """The blob cache's index directory for this codec."""
        safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in self.library)
        return f"{self.name}{self.level}-{safe}"


def _missing(module: str, package: str) -> PublishError:
    return PublishError(
        f"{module} is not installed: aibuild compresses layers with the pinned {package} "
        f"wheel (pip install {package}, as pyproject.toml pins it)"
    )


def codec(name: str) -> Codec:
    """The ``Codec`` for ``gzip`` or ``zstd`` (PublishError for another name or a missing
    library)."""
    if name == GZIP:
        try:
            from zlib_ng import zlib_ng
        except ImportError:
            raise _missing("zlib_ng", "zlib-ng") from None
        return Codec(GZIP, GZIP_LEVEL, f"zlib-ng {zlib_ng.ZLIBNG_VERSION}", LAYER_GZIP)
    if name == ZSTD:
        try:
            import zstandard
        except ImportError:
            raise _missing("zstandard", "zstandard") from None
        lib = ".".join(str(p) for p in zstandard.ZSTD_VERSION)
        return Codec(ZSTD, ZSTD_LEVEL, f"zstandard {zstandard.__version__} libzstd {lib}",
                     LAYER_OCI_ZSTD)  # fmt: skip
    raise PublishError(f"unknown compression {name!r}: choose {' or '.join(COMPRESSIONS)}")


class _Hashing:
    """A write-only file that hashes and counts what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.out.write(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self.out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def compress_stream(
    src: IO[bytes],
    out: IO[bytes],
    name: str,
    *,
    size: int = -1,
    threads: int = 1,
    progress: Progress = _nothing,
) -> str:
    """Compress ``src`` into ``out`` with codec ``name``; the sha256 digest of what was
    written. ``size`` (the input's length, -1 when unknown) goes into a zstd frame header;
    ``threads`` are zstd's workers (at least 1: the output is the same for any number)."""
    codec(name)  # a clear error when the library is missing
    sink = _Hashing(out)
    if name == GZIP:
        from zlib_ng import zlib_ng

        # wbits 31: a gzip wrapper with mtime 0, no name, OS byte from the library (fixed).
        deflate = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, 31)
        while chunk := src.read(CHUNK):
            sink.write(deflate.compress(chunk))
            progress(len(chunk))
        sink.write(deflate.flush())
    else:
        import zstandard

        cctx = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL,
            threads=max(1, threads),
            write_checksum=False,
            write_content_size=size >= 0,
        )
        with cctx.stream_writer(
            cast(IO[bytes], sink),
            size=size if size >= 0 else zstandard.CONTENTSIZE_UNKNOWN,
            closefd=False,
        ) as writer:
            while chunk := src.read(CHUNK):
                writer.write(chunk)
                progress(len(chunk))
    return sink.digest


def compress_file(
    src: Path, dst: Path, name: str, *, threads: int = 1, progress: Progress = _nothing
) -> str:
    """Compress the file ``src`` into ``dst``; its digest."""
    with src.open("rb") as raw, dst.open("wb") as out:
        return compress_stream(
            raw, out, name, size=src.stat().st_size, threads=threads, progress=progress
        )


def workers(count: int, cores: int | None = None) -> tuple[int, int]:
    """(layers compressed at once, zstd threads for each): together up to the cores."""
    cores = max(1, cores or os.cpu_count() or 1)
    at_once = max(1, min(count, cores))
    return at_once, max(1, cores // at_once)


def engines_that_pull(name: str) -> str:
    """Which engines can pull layers of this compression, in words."""
    if name == ZSTD:
        return (
            "zstd layers: Docker 23.0 or newer (containerd 1.5+, Podman 4, Kubernetes "
            "with containerd 1.5+) can pull this image; Docker 20.10 cannot"
        )
    return "gzip layers: every Docker and OCI engine can pull this image"
