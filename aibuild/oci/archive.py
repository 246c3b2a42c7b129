"""Exported images (docker save / docker load) and the blob cache of deterministic
compressed layers (gzip or zstd: ``aibuild.oci.compress``)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from aibuild.oci import compress
from aibuild.oci.media import (
    CONFIG_OCI,
    CONFIG_V1,
    LAYER_GZIP,
    MANIFEST_OCI,
    MANIFEST_V2,
)
from aibuild.oci.meter import Meter

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


# Fixed gzip settings: the compressed bytes (and so the registry digest) depend
# only on the layer's bytes and the pinned zlib-ng wheel's algorithm for this level.
GZIP_LEVEL = compress.GZIP_LEVEL
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


def gzip_deterministic(src: Path, dst: Path) -> str:
    """gzip ``src`` into ``dst`` with a fixed header (mtime 0, no name) by the pinned
    zlib-ng, never the host's zlib; its sha256 digest."""
    return compress.compress_file(src, dst, compress.GZIP)


@dataclass(frozen=True)
class Blob:
    """A registry blob on disk: its digest, size and media type."""

    digest: str
    size: int
    media_type: str
    path: Path


class BlobCache:
    """Compressed layers and configs on disk, keyed by digest; diff ID -> compressed digest
    index, one per codec (compression, level and library version: ``Codec.key``).

    Location: ``$AIBUILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/aibuild``, else
    ``~/.cache/aibuild``. Deterministic compression makes entries valid forever;
    delete the directory to reclaim the space.
    """

    def __init__(self, root: Path | None = None, compression: str = compress.GZIP) -> None:
        if root is None:
            env = os.environ.get(ENV_CACHE)
            xdg = os.environ.get("XDG_CACHE_HOME")
            root = Path(env) if env else Path(xdg or Path.home() / ".cache") / "aibuild"
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.codec = compress.codec(compression)
        self.compression = compression
        self.index = self.root / "index" / self.codec.key
        self.progress: compress.Progress = lambda _: None  # input bytes compressed
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
        return Blob(digest, path.stat().st_size, self.codec.media_type, path)

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

    def add_layers(self, layers: Mapping[str, Path], cores: int | None = None) -> None:
        """Compress each (diff ID, tar) not yet cached, in parallel up to the cores (the
        codecs release the GIL; zstd's threads share the cores)."""
        todo = {d: p for d, p in layers.items() if self.layer(d) is None}
        if not todo:
            return
        at_once, threads = compress.workers(len(todo), cores)
        with ThreadPoolExecutor(max_workers=at_once) as pool:
            for future in [pool.submit(self.store_layer, d, p, threads) for d, p in todo.items()]:
                future.result()

    def store_layer(self, diff_id: str, layer_tar: Path, threads: int = 1) -> Blob:
        """Compress one uncompressed layer into the cache (``threads``: zstd's workers,
        which do not change the bytes); its blob. Safe to call from several threads."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.blobs, prefix=".c-", delete=False) as t:
            tmp = Path(t.name)
        try:
            digest = compress.compress_file(
                layer_tar, tmp, self.compression, threads=threads, progress=self.progress
            )
            tmp.replace(self.path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        key = diff_id.removeprefix("sha256:")
        with tempfile.NamedTemporaryFile(
            "w", dir=self.index, prefix=f".{key}.", delete=False, encoding="ascii"
        ) as entry:
            entry.write(digest)
        Path(entry.name).replace(self.index / key)
        return Blob(digest, self.path(digest).stat().st_size, self.codec.media_type,
                    self.path(digest))  # fmt: skip

    def add_layer(self, diff_id: str, layer_tar: Path) -> Blob:
        """Compress an uncompressed layer tar into the cache (no-op when already there)."""
        self.add_layers({diff_id: layer_tar})
        found = self.layer(diff_id)
        assert found is not None
        return found


def image_blobs(
    client: docker.DockerClient,
    image: str,
    cache: BlobCache | None = None,
    log: Log = silent,
    *,
    on_blob: Callable[[Blob, str], None] | None = None,
    cores: int | None = None,
) -> tuple[Blob, list[Blob]]:
    """The config blob and deterministic compressed layer blobs (the cache's compression)
    of a local image.

    Exports the image only when the cache lacks one of them. Each missing layer is
    compressed as soon as the export has written it, while the export goes on (up to
    ``cores`` layers at once), and its uncompressed copy is deleted then. ``on_blob(blob,
    label)`` is told of each layer blob as soon as it is ready (cached ones first; the
    others from a compressing thread), so that an upload can start before the export ends.
    Export and compression report progress (bytes of the total, rate, ETA) through ``log``.
    """

    cache = cache or BlobCache()
    with engine_errors(f"inspecting {image}"):
        attrs = client.images.get(image).attrs
    image_id: str = attrs["Id"]
    diff_ids: list[str] = list(attrs["RootFS"]["Layers"])
    labels = {d: f"layer {i}/{len(diff_ids)}" for i, d in reversed(list(enumerate(diff_ids, 1)))}
    tell = on_blob or (lambda _blob, _label: None)
    config = cache.config(image_id)
    layers = {d: cache.layer(d) for d in diff_ids}
    for diff_id, blob in layers.items():
        if blob is not None:
            tell(blob, labels[diff_id])
    missing = {d for d, b in layers.items() if b is None}
    if config is None or missing:
        log(f"exporting {image} ({len(missing)} layer(s) to compress)")
        config = _export_and_compress(
            client, image, attrs, cache, missing, lambda b, d: tell(b, labels[d]), log, cores
        )
    blobs = [cache.layer(d) for d in diff_ids]
    assert all(blobs)
    return config, [b for b in blobs if b is not None]


def _export_and_compress(
    client: docker.DockerClient,
    image: str,
    attrs: Mapping[str, Any],
    cache: BlobCache,
    missing: set[str],
    tell: Callable[[Blob, str], None],
    log: Log,
    cores: int | None,
) -> Blob:
    """``docker save`` the image, compressing each ``missing`` layer into ``cache`` as soon
    as it is written (``tell(blob, diff_id)`` when done); the config blob."""
    image_id, diff_ids = str(attrs["Id"]), list(attrs["RootFS"]["Layers"])
    # Layers arrive one by one, so most often one compresses at a time: each may use every
    # core (zstd's worker count does not change its bytes), and up to one per core run.
    threads = at_once = max(1, cores or os.cpu_count() or 1)
    export = Meter("export", int(attrs.get("Size") or 0), log)
    squeeze = Meter(f"compress ({cache.compression})", 0, log)
    cache.progress = squeeze.add
    started: dict[str, Future[Blob]] = {}

    def compress_one(diff_id: str, tar: Path) -> Blob:
        blob = cache.store_layer(diff_id, tar, threads)
        tar.unlink(missing_ok=True)  # the uncompressed copy is no longer needed
        tell(blob, diff_id)
        return blob

    def on_file(diff_id: str, path: Path) -> None:
        for future in started.values():  # a failed compression (or upload) ends the export
            if future.done() and future.exception() is not None:
                future.result()
        if diff_id in missing and diff_id not in started:
            squeeze.expect(path.stat().st_size)
            started[diff_id] = pool.submit(compress_one, diff_id, path)

    with (
        disk_errors(f"exporting {image} for the push"),
        tempfile.TemporaryDirectory(prefix="aibuild-save-", dir=_tmp_root(cache)) as tmp,
        ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="aibuild-compress") as pool,
    ):
        try:
            wanted = {*missing, image_id}
            saved = save_image(
                client,
                image_id,
                Path(tmp),
                keep=lambda d: d in wanted,
                progress=export.add,
                on_file=on_file,
            )
            export.finish()
            if not saved.is_image(image_id):
                raise PublishError(
                    f"docker save of {image} gave another image (config {saved.image_id}, "
                    f"manifest {saved.manifest_digest or 'none'}), not {image_id}"
                )
            if saved.diff_ids != diff_ids:
                raise PublishError(
                    f"docker save of {image} gave {len(saved.diff_ids)} layer(s) that "
                    f"differ from the {len(diff_ids)} its config lists"
                )
            config = cache.add_config(saved.config, image_id)
            for diff_id, path in zip(saved.diff_ids, saved.layers, strict=True):
                on_file(diff_id, path)  # a layer the stream did not announce (none expected)
            for future in started.values():
                future.result()
        except BaseException:
            for future in started.values():
                future.cancel()
            raise
        finally:
            cache.progress = lambda _: None
    log(f"compressed {len(started)} layer(s) with {cache.codec.library}")
    squeeze.finish()
    return config


def _tmp_root(cache: BlobCache) -> str:
    cache.root.mkdir(parents=True, exist_ok=True)
    return str(cache.root)


def manifest_media_type(layers: Iterable[Blob]) -> str:
    """Docker's manifest v2 for gzip layers (what every engine reads); OCI's for others."""
    return MANIFEST_V2 if all(b.media_type == LAYER_GZIP for b in layers) else MANIFEST_OCI


def manifest_bytes(config: Blob, layers: Iterable[Blob]) -> bytes:
    """The image manifest in canonical JSON (fixed key order): Docker's manifest v2
    (schema 2) for gzip layers, the OCI image manifest for zstd ones."""
    layers = list(layers)
    media_type = manifest_media_type(layers)
    config_type = config.media_type if media_type == MANIFEST_V2 else CONFIG_OCI
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": config.size, "digest": config.digest},
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
