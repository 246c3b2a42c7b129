"""Exported images (docker save / docker load) and the blob cache of deterministic gzip layers."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aibuild.engine import (
    engine_errors,
    engine_facts,
    load_archive,
    save_image,
)
from aibuild.errors import PublishError
from aibuild.logs import Log, silent
from aibuild.oci.media import CHUNK, CONFIG_V1, LAYER_GZIP, MANIFEST_V2

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


# Fixed gzip settings: the compressed bytes (and so the registry digest) depend
# only on the layer's bytes and zlib's algorithm for this level.
GZIP_LEVEL = 6
ENV_CACHE = "AIBUILD_CACHE_DIR"


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through to ``out`` (tarfile and gzip
    need ``write`` and ``tell``)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.out.write(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def gzip_deterministic(src: Path, dst: Path, level: int = GZIP_LEVEL) -> str:
    """gzip ``src`` into ``dst`` with a fixed header (mtime 0, no name); its sha256 digest."""
    with src.open("rb") as raw, dst.open("wb") as out:
        tee = HashingWriter(out)
        with gzip.GzipFile(filename="", mode="wb", fileobj=tee, compresslevel=level, mtime=0) as gz:
            while chunk := raw.read(CHUNK):
                gz.write(chunk)
    return tee.digest


@dataclass(frozen=True)
class Blob:
    """A registry blob on disk: its digest, size and media type."""

    digest: str
    size: int
    media_type: str
    path: Path


class BlobCache:
    """Compressed layers and configs on disk, keyed by digest; diff ID -> gzip digest index.

    Location: ``$AIBUILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/aibuild``, else
    ``~/.cache/aibuild``. Deterministic compression makes entries valid forever;
    delete the directory to reclaim the space.
    """

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            env = os.environ.get(ENV_CACHE)
            xdg = os.environ.get("XDG_CACHE_HOME")
            root = Path(env) if env else Path(xdg or Path.home() / ".cache") / "aibuild"
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.index = self.root / f"gzip{GZIP_LEVEL}"
        # engine image ID -> config digest, for engines whose image IDs are manifest
        # digests (the containerd store): their config is found without an export.
        self.ids = self.root / "image-ids"

    def path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def layer(self, diff_id: str) -> Blob | None:
        """The compressed blob for an uncompressed layer, when cached."""
        entry = self.index / diff_id.removeprefix("sha256:")
        if not entry.is_file():
            return None
        digest = entry.read_text(encoding="ascii").strip()
        path = self.path(digest)
        if not path.is_file():
            return None
        return Blob(digest, path.stat().st_size, LAYER_GZIP, path)

    def config(self, image_id: str) -> Blob | None:
        """The config blob of a local image, by its engine ID (config or manifest digest)."""
        alias = self.ids / image_id.removeprefix("sha256:")
        digest = alias.read_text(encoding="ascii").strip() if alias.is_file() else image_id
        path = self.path(digest)
        return Blob(digest, path.stat().st_size, CONFIG_V1, path) if path.is_file() else None

    def add_config(self, data: bytes, image_id: str | None = None) -> Blob:
        """Store a config; ``image_id``, the engine's ID for it when that is not the
        config digest, is remembered for ``config``."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.is_file():
            self.blobs.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        if image_id and image_id != digest:
            self.ids.mkdir(parents=True, exist_ok=True)
            alias_tmp = self.ids / f".{image_id.removeprefix('sha256:')}.tmp"
            alias_tmp.write_text(digest, encoding="ascii")
            alias_tmp.replace(self.ids / image_id.removeprefix("sha256:"))
        return Blob(digest, len(data), CONFIG_V1, path)

    def add_layers(self, layers: Mapping[str, Path]) -> None:
        """``add_layer`` for each (diff ID, tar), in parallel (zlib releases the GIL)."""
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(lambda item: self.add_layer(*item), layers.items()))

    def add_layer(self, diff_id: str, layer_tar: Path) -> Blob:
        """Compress an uncompressed layer tar into the cache (no-op when already there)."""
        found = self.layer(diff_id)
        if found is not None:
            return found
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.blobs, prefix=".gz-", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            digest = gzip_deterministic(layer_tar, tmp_path)
            tmp_path.replace(self.path(digest))
        finally:
            tmp_path.unlink(missing_ok=True)
        entry_tmp = self.index / f".{diff_id.removeprefix('sha256:')}.tmp"
        entry_tmp.write_text(digest, encoding="ascii")
        entry_tmp.replace(self.index / diff_id.removeprefix("sha256:"))
        path = self.path(digest)
        return Blob(digest, path.stat().st_size, LAYER_GZIP, path)


def image_blobs(
    client: docker.DockerClient,
    image: str,
    cache: BlobCache | None = None,
    log: Log = silent,
) -> tuple[Blob, list[Blob]]:
    """The config blob and deterministic gzip layer blobs of a local image.

    Exports the image only when the cache lacks one of them; compresses the
    missing layers in parallel (zlib releases the GIL).
    """

    cache = cache or BlobCache()
    with engine_errors(f"inspecting {image}"):
        attrs = client.images.get(image).attrs
    image_id: str = attrs["Id"]
    diff_ids: list[str] = list(attrs["RootFS"]["Layers"])
    config = cache.config(image_id)
    layers = [cache.layer(d) for d in diff_ids]
    if config is not None and all(layers):
        return config, [b for b in layers if b is not None]
    missing = {d for d, b in zip(diff_ids, layers, strict=True) if b is None}
    log(f"exporting {image} ({len(missing)} layer(s) to compress)")

    with (
        disk_errors(f"exporting {image} for the push"),
        tempfile.TemporaryDirectory(prefix="aibuild-save-", dir=_tmp_root(cache)) as tmp,
    ):
        wanted = {*missing, image_id}
        saved = save_image(client, image_id, Path(tmp), keep=lambda d: d in wanted)
        if not saved.is_image(image_id):
            raise PublishError(
                f"docker save of {image} gave another image (config {saved.image_id}, "
                f"manifest {saved.manifest_digest or 'none'}), not {image_id}"
            )
        if saved.diff_ids != diff_ids:
            raise PublishError(
                f"docker save of {image} gave {len(saved.diff_ids)} layer(s) that differ "
                f"from the {len(diff_ids)} its config lists"
            )
        config = cache.add_config(saved.config, image_id)
        todo = {d: p for d, p in zip(saved.diff_ids, saved.layers, strict=True) if d in missing}
        started = time.monotonic()
        cache.add_layers(todo)
        log(f"compressed {len(todo)} layer(s) in {time.monotonic() - started:.1f}s")
    blobs = [cache.layer(d) for d in diff_ids]
    assert all(blobs)
    return config, [b for b in blobs if b is not None]


def _tmp_root(cache: BlobCache) -> str:
    cache.root.mkdir(parents=True, exist_ok=True)
    return str(cache.root)


def manifest_bytes(config: Blob, layers: Iterable[Blob]) -> bytes:
    """The Docker image manifest v2 (schema 2), in canonical JSON (fixed key order)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": config.media_type, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": b.media_type, "size": b.size, "digest": b.digest} for b in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode("utf-8")


@contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """A local file error as one clear line instead of a traceback; only a full disk
    (or quota) gets the hint about space (an export is as large as the image)."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or tempfile.gettempdir()
        hint = ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = (
                "; it needs about twice the image's size free in the temporary directory (TMPDIR)"
            )
        raise PublishError(f"{what} failed: {exc.strerror or exc} ({where}){hint}") from None


def load_image(
    client: docker.DockerClient,
    config: bytes,
    layers: Sequence[tuple[str, Path]],
    tags: Sequence[str],
    workdir: Path,
    *,
    present: int = 0,
) -> str:
    """``docker load`` a config and layers (diff ID, uncompressed tar). The first
    ``present`` layers are already in the engine (the base): an engine that finds a
    layer by its diff ID (the classic store) is not sent them; the containerd store
    wants every layer in the archive. Returns the engine's ID of the loaded image (the
    config digest on the classic store, a manifest digest on the containerd store)."""

    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    archive = workdir / "load.tar"
    manifest = [
        {
            "Config": f"{image_id.removeprefix('sha256:')}.json",
            "RepoTags": list(tags) or None,
            "Layers": [f"{d.removeprefix('sha256:')}/layer.tar" for d, _ in layers],
        }
    ]
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add_bytes(manifest[0]["Config"], config)  # type: ignore[arg-type]
        skip = 0 if engine_facts(client).load_needs_every_layer else present
        for diff_id, path in layers[skip:]:
            tar.add(str(path), arcname=f"{diff_id.removeprefix('sha256:')}/layer.tar")
        add_bytes("manifest.json", json.dumps(manifest).encode())
    loaded = load_archive(client, archive)
    engine_id = next(iter(loaded), "")
    with engine_errors("inspecting the normalised image"):
        found = client.images.get(engine_id or image_id)
        # The engine's ID is the config digest (classic store) or the digest of the
        # manifest it wrote for the image (containerd store): either way its config
        # must be the one sent.
        if found.attrs.get("RootFS", {}).get("Layers") != [d for d, _ in layers]:
            raise PublishError(f"the engine loaded {found.id} with other layers than sent")
    return str(found.id)
