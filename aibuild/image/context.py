"""The build context as a deterministic tar, with its .dockerignore applied."""

from __future__ import annotations

import gzip as gzip_module
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from aibuild.errors import BuildError, RenderError
from aibuild.profile.project import DEFAULT_EXCLUDE


def _read_dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(root: Path, patterns: Sequence[str] | None = None) -> list[str]:
    """The context's paths (relative, POSIX, sorted) after applying ``patterns`` (default:
    its .dockerignore)."""
    patterns = _read_dockerignore(root) if patterns is None else list(patterns)
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


def project_files(root: Path, exclude: Sequence[str] = ()) -> list[str]:
    """The project's paths that go into the image (relative, POSIX, sorted): everything
    but aibuild's defaults (``DEFAULT_EXCLUDE``), then the project's own .dockerignore,
    then ``exclude`` (project.exclude); a later ``!PATTERN`` takes a path back."""
    return context_files(root, [*DEFAULT_EXCLUDE, *_read_dockerignore(root), *exclude])


def copy_project(root: Path, exclude: Sequence[str], dest: Path) -> int:
    """Copy the project's files (``project_files``) into ``dest``: hard links where the
    disk allows, symbolic links as links; sockets and other special files are left out.
    Returns the number of files; RenderError names a file that cannot be read."""
    dest.mkdir(parents=True, exist_ok=True)
    if dest.resolve().is_relative_to(root.resolve()):  # a --context-dir inside the project
        exclude = [*exclude, dest.resolve().parent.relative_to(root.resolve()).as_posix()]
    count = 0
    for rel in project_files(root, exclude):
        source, target = root / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = source.lstat().st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISDIR(mode):
                target.mkdir(exist_ok=True)
            elif stat.S_ISREG(mode):
                try:  # instant, and no second copy of a large file on the same disk
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
                count += 1
        except OSError as exc:
            raise RenderError(f"cannot copy the project's {source}: {exc.strerror}") from None
    return count
