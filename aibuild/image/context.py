"""The build context as a deterministic tar, with its .dockerignore applied."""

from __future__ import annotations

import gzip as gzip_module
import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from aibuild.errors import BuildError


def _read_dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(root: Path) -> list[str]:
    """The context's paths (relative, POSIX, sorted) after applying its .dockerignore."""
    patterns = _read_dockerignore(root)
    if patterns:
        from docker.utils.build import exclude_paths

        kept = {p.replace(os.sep, "/") for p in exclude_paths(str(root), patterns, "Dockerfile")}
    else:
        kept = set()
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            for name in dirnames + filenames:
                kept.add((rel / name).as_posix())
    return sorted(kept)


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir():
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    else:
        info.mode = 0o777 if info.issym() else 0o644
    info.pax_headers = {}
    return info


def context_tar(root: Path, *, gzip: bool = False) -> IO[bytes]:
    """The build context as a deterministic tar (optionally gzip with a fixed header).

    Entries are sorted; every mtime is 0, owners are 0:0 with no names, modes are
    0755 (directories, executables) or 0644: the same tree always gives the same
    bytes, so the engine's cache keys (which hash file contents and metadata) hit.
    The tar is spooled to a temporary file: contexts may hold a GB-sized wheelhouse.
    """
    root = Path(root)
    if not (root / "Dockerfile").is_file():
        raise BuildError(f"no Dockerfile in the build context {root}")
    out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
    raw: IO[bytes] = (
        gzip_module.GzipFile(fileobj=out, mode="wb", mtime=0, filename="")  # type: ignore[assignment]
        if gzip
        else out
    )
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in context_files(root):
            path = root / rel
            info = _normalised(tar.gettarinfo(str(path), arcname=rel))
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    if gzip:
        raw.close()
    out.seek(0)
    return out
