"""The engine boundary: the one place that creates a Docker client.

The client is created lazily (never at import time, so ``aibuild --help`` does
not import docker) and every way of failing to reach the engine becomes an
``EngineError`` whose message names the engine address (``DOCKER_HOST``) and
says how to start one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aibuild.errors import EngineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

DEFAULT_HOST = "unix:///var/run/docker.sock"
START_HINT = (
    "Start a Docker engine (`sudo systemctl start docker`, or `make engine` in an "
    "aibuild checkout) or point DOCKER_HOST at a running one."
)


def engine_address(docker_host: str | None = None) -> str:
    """The engine address a client will use: the argument, else DOCKER_HOST, else the socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def unreachable(docker_host: str | None, reason: object) -> EngineError:
    """The error for an engine that does not answer."""
    address = engine_address(docker_host)
    if docker_host:
        origin = ""
    elif os.environ.get("DOCKER_HOST"):
        origin = " (from DOCKER_HOST)"
    else:
        origin = " (DOCKER_HOST is unset: the default)"
    return EngineError(
        f"cannot reach the Docker engine at {address}{origin}: {_short_reason(reason)}\n"
        f"{START_HINT}"
    )


def _short_reason(reason: object) -> str:
    text = str(reason).strip() or type(reason).__name__
    # requests' connection errors nest several reprs; the innermost cause is the useful part.
    for marker in ("Failed to establish a new connection: ", "Connection aborted.", "Errno"):
        if marker in text:
            tail = text[text.index(marker) :]
            return tail.rstrip("')\"").split("'))")[0]
    return text.splitlines()[0][:300]


def get_client(docker_host: str | None = None, timeout: int = 600) -> docker.DockerClient:
    """A connected Docker client, or EngineError naming the address that did not answer.

    ``timeout`` is the per-request socket timeout; builds stream for minutes, so it is long.
    """
    import docker
    import requests

    address = engine_address(docker_host)
    if address.startswith("unix://") and not Path(address[len("unix://") :]).exists():
        # Checked first: docker-py leaks the socket of a failed unix connect.
        raise unreachable(docker_host, f"no socket at {address[len('unix://') :]}")
    client = None
    try:
        client = docker.DockerClient(base_url=address, timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        if client is not None:
            client.close()
        raise unreachable(docker_host, exc) from None
    return client


@contextmanager
def client_session(
    client: docker.DockerClient | None = None, docker_host: str | None = None
) -> Iterator[docker.DockerClient]:
    """The given client, or a new one that is closed when the block ends."""
    if client is not None:
        yield client
        return
    own = get_client(docker_host)
    try:
        yield own
    finally:
        own.close()


def is_connection_error(exc: BaseException) -> bool:
    """Whether an exception raised mid-operation means the engine went away."""
    import requests

    return isinstance(exc, requests.exceptions.ConnectionError | ConnectionError)


@contextmanager
def engine_errors(what: str, docker_host: str | None = None) -> Iterator[None]:
    """Turn docker-py and connection failures inside the block into EngineError.

    ``what`` names the operation ("building the image") for the message.
    """
    import docker
    import requests

    try:
        yield
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise unreachable(docker_host, exc) from None
    except docker.errors.APIError as exc:
        raise EngineError(f"the Docker engine refused {what}: {api_message(exc)}") from None
    except docker.errors.DockerException as exc:
        raise EngineError(f"Docker failed while {what}: {exc}") from None


def api_message(exc: Any) -> str:
    """The engine's own message from an APIError (its ``explanation``), without the HTTP noise."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation).strip()
    return str(exc).strip()


# ------------------------------------------------------------------ engine differences
# Everything below reads what the engine returns instead of asking which engine it is:
# the image store (classic graph drivers or containerd's), the ``docker save`` layout,
# what an image ID is, where a push reports its digest, and how a load names its image.

CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_PUSH_DIGEST = re.compile(r"\bdigest: (sha256:[0-9a-f]{64})\b")
_LOADED_ID = "Loaded image ID: "
_LOADED_NAME = "Loaded image: "


@dataclass(frozen=True)
class EngineFacts:
    """What an engine says about itself: versions and its image store.

    ``store`` is "containerd" when images live in containerd's content store (docker
    info's DriverStatus ``driver-type`` is ``io.containerd.snapshotter.v1``; the default
    of fresh Docker 29 installs), else "classic" (a graph driver such as overlay2).
    """

    version: str
    api_version: str
    store: str
    driver: str
    os: str = ""

    @property
    def id_is_manifest_digest(self) -> bool:
        """Whether image IDs are manifest digests (containerd store) rather than config
        digests (classic store)."""
        return self.store == "containerd"

    @property
    def load_needs_every_layer(self) -> bool:
        """Whether ``docker load`` wants every layer in the archive, even those it holds
        (the containerd store resolves layers in the archive only; the classic store
        skips a layer it has by diff ID)."""
        return self.store == "containerd"

    def to_dict(self) -> dict[str, str]:
        return {
            "version": self.version,
            "api_version": self.api_version,
            "image_store": self.store,
            "storage_driver": self.driver,
            "os": self.os,
        }


def image_store(info: Mapping[str, Any]) -> str:
    """ "containerd" or "classic", from ``docker info``."""
    for pair in info.get("DriverStatus") or []:
        if (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and pair[0] == "driver-type"
            and str(pair[1]).startswith(CONTAINERD_SNAPSHOTTER)
        ):
            return "containerd"
    return "classic"


def engine_facts(client: docker.DockerClient) -> EngineFacts:
    """The engine's version, API version and image store (EngineError when it fails)."""
    with engine_errors("describing itself (docker version, docker info)"):
        return facts_from(client.version(), client.info())


def facts_from(version: Mapping[str, Any], info: Mapping[str, Any]) -> EngineFacts:
    """EngineFacts from ``docker version`` and ``docker info`` answers."""
    return EngineFacts(
        version=str(version.get("Version") or info.get("ServerVersion") or "unknown"),
        api_version=str(version.get("ApiVersion") or "unknown"),
        store=image_store(info),
        driver=str(info.get("Driver") or ""),
        os=str(info.get("OperatingSystem") or ""),
    )


@dataclass(frozen=True)
class EngineLimit:
    """A feature known not to work (or to work worse) on an engine: what, and the fix."""

    problem: str
    fix: str


# Docker releases whose support ended (docs.docker.com/engine/release-notes): they
# still work with aibuild, but users are told.
END_OF_LIFE = ("17.", "18.", "19.", "20.10", "23.0", "24.0", "25.0")
MIN_API = (1, 41)  # Docker 20.10: the oldest engine aibuild is tested on


def engine_limits(facts: EngineFacts) -> list[EngineLimit]:
    """What is known not to work, or not to be tested, on this engine (docs/engines.md)."""
    limits: list[EngineLimit] = []
    if facts.version.startswith(END_OF_LIFE):
        limits.append(
            EngineLimit(
                f"Docker {facts.version} has reached end of life",
                "upgrade to a supported Docker Engine (aibuild is tested on 20.10 and 26.1)",
            )
        )
    try:
        api = tuple(int(part) for part in facts.api_version.split(".")[:2])
    except ValueError:
        api = MIN_API
    if api < MIN_API:
        limits.append(
            EngineLimit(
                f"API {facts.api_version} is older than {'.'.join(map(str, MIN_API))} "
                "(Docker 20.10), the oldest aibuild is tested on",
                "upgrade the Docker Engine",
            )
        )
    if "podman" in facts.version.lower() or "podman" in facts.os.lower():
        limits.append(
            EngineLimit(
                "Podman's Docker-compatible API is not tested with aibuild",
                "use Docker Engine (see docs/engines.md)",
            )
        )
    return limits


def push_digest(message: Mapping[str, Any]) -> str | None:
    """The manifest digest a ``docker push`` stream message reports, if it reports one.

    The classic store sends it twice (an ``aux`` record and a status line), the
    containerd store only as the status line ``TAG: digest: sha256:... size: N``.
    """
    aux = message.get("aux")
    if isinstance(aux, Mapping) and aux.get("Digest"):
        return str(aux["Digest"])
    status = message.get("status")
    if isinstance(status, str):
        found = _PUSH_DIGEST.search(status)
        if found:
            return found.group(1)
    return None


def loaded_images(messages: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(image IDs, names) a ``docker load`` stream reports. The classic store reports an
    untagged image by config digest, the containerd store by manifest digest; both
    report a tagged one by name only."""
    ids: list[str] = []
    names: list[str] = []
    for message in messages:
        text = str(message.get("stream") or "").strip()
        if text.startswith(_LOADED_ID):
            ids.append(text[len(_LOADED_ID) :].strip())
        elif text.startswith(_LOADED_NAME):
            names.append(text[len(_LOADED_NAME) :].strip())
    return ids, names


def load_archive(client: docker.DockerClient, archive: Path) -> list[str]:
    """``docker load`` a tar; the engine's IDs of the images it loaded.

    EngineError names the engine's refusal. Names are resolved to IDs, so callers get
    an ID they can pass back to this engine whatever its store.
    """
    import docker as docker_module

    with engine_errors(f"loading {archive.name}"), archive.open("rb") as handle:
        messages: list[dict[str, Any]] = []
        for message in client.api.load_image(handle):
            if "error" in message or "errorDetail" in message:
                detail = message.get("errorDetail") or {}
                raise EngineError(
                    f"the engine refused the image archive: "
                    f"{message.get('error') or detail.get('message')}"
                )
            messages.append(message)
        ids, names = loaded_images(messages)
        for name in names:
            try:
                ids.append(str(client.images.get(name).id))
            except docker_module.errors.ImageNotFound:
                raise EngineError(f"the engine reported loading {name}, then lacks it") from None
    return list(dict.fromkeys(ids))


def wait_removed(client: docker.DockerClient, container_id: str) -> Callable[[], int]:
    """Register a wait for the container's removal before it starts (as ``docker run``
    does: with AutoRemove the container is gone right after it exits, and a wait sent
    then finds nothing). The engine answers with headers at once; the body (the exit
    code) comes once the container has exited and been removed. Returns a function that
    blocks until then. docker-py's ``wait`` cannot do this (it reads the body at once),
    so this is the one raw request aibuild sends, kept here."""
    api = client.api
    response = api._post(
        api._url("/containers/{0}/wait", container_id),
        params={"condition": "removed"},
        stream=True,
        timeout=None,
    )
    api._raise_for_status(response)

    def exit_code() -> int:
        body = json.loads(response.content or b"{}")
        return int(body.get("StatusCode", 1))

    return exit_code


# ------------------------------------------------------------------------ docker save


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (docker-py's ``save()`` stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


@dataclass
class SavedImage:
    """An image exported with ``docker save`` into a directory.

    ``layers`` are the uncompressed layer tars in order, ``diff_ids`` their sha256;
    ``manifest_digest`` is the digest of the engine's manifest when the archive is an
    OCI layout (containerd store), else "".
    """

    config: bytes
    layers: list[Path]
    diff_ids: list[str]
    workdir: Path
    manifest_digest: str = ""
    layout: str = "legacy"  # "legacy" (manifest.json) | "oci" (index.json)

    @property
    def image_id(self) -> str:
        """The config digest (the classic store's image ID)."""
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    def is_image(self, engine_id: str) -> bool:
        """Whether ``engine_id`` (config or manifest digest) names this image."""
        return engine_id in {self.image_id, self.manifest_digest} - {""}


@dataclass(frozen=True)
class _Entry:
    path: Path  # the file on disk (absent when ``keep`` said no)
    diff_id: str  # sha256 of the uncompressed bytes
    compression: str  # "", "gzip" or "zstd"


class SaveError(EngineError):
    """A ``docker save`` archive that does not hold what it says."""


def decompressed(source: IO[bytes], name: str) -> IO[bytes]:
    """``source`` read through gzip when it is gzip-compressed (a containerd-store
    layer); SaveError for zstd."""
    peek = io.BufferedReader(source, _CHUNK)  # type: ignore[type-var]
    head = peek.peek(4)[:4]
    if head.startswith(ZSTD_MAGIC):
        raise SaveError(
            f"the engine exported {name} zstd-compressed; aibuild reads gzip and "
            "uncompressed layers (the engine's default): rebuild without zstd compression"
        )
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=peek, mode="rb")  # type: ignore[return-value]
    return peek


def _copy_member(source: IO[bytes], out: IO[bytes], name: str) -> tuple[str, str]:
    """Copy a member, decompressing a gzip (or refusing a zstd) blob on the way:
    (sha256 of what was written, compression)."""
    head = source.read(4)
    digest = hashlib.sha256()
    if head.startswith(ZSTD_MAGIC):
        raise SaveError(
            f"the engine exported {name} zstd-compressed; aibuild reads gzip and "
            "uncompressed layers (the engine's default): rebuild without zstd compression"
        )
    if head.startswith(GZIP_MAGIC):
        inflate = zlib.decompressobj(wbits=31)
        data = head
        while data:
            while data:
                plain = inflate.decompress(data)
                digest.update(plain)
                out.write(plain)
                data = inflate.unused_data
                if data:  # a second gzip member follows
                    inflate = zlib.decompressobj(wbits=31)
            data = source.read(_CHUNK)
        tail = inflate.flush()
        digest.update(tail)
        out.write(tail)
        if not inflate.eof:
            raise SaveError(f"the engine's export of {name} ends in the middle of its gzip data")
        return "sha256:" + digest.hexdigest(), "gzip"
    data = head
    while data:
        digest.update(data)
        out.write(data)
        data = source.read(_CHUNK)
    return "sha256:" + digest.hexdigest(), ""


def read_saved(
    stream: IO[bytes],
    workdir: Path,
    *,
    what: str,
    keep: Callable[[str], bool] | None = None,
    on_file: Callable[[str, Path], None] | None = None,
) -> SavedImage:
    """Read a ``docker save`` archive (one image) from ``stream`` into ``workdir``.

    Both layouts: the legacy one (``manifest.json`` naming the config and
    ``ID/layer.tar`` files, or symlinks to blobs since Docker 25) and the OCI image
    layout (``index.json`` -> manifest -> ``blobs/sha256/...``) that the containerd
    store writes, where layers may be gzip-compressed: they are decompressed, so
    ``diff_ids`` are always of the uncompressed tars. ``keep(diff_id)`` false deletes
    a file as soon as it is hashed; ``on_file(diff_id, path)`` is told of every other file
    as soon as it is on disk, while the stream goes on (to compress layers during the
    export). A file the layout names that the archive lacks is a SaveError naming it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    archive = _unpack(stream, workdir, what, keep, on_file)
    layout, manifest_digest, config_name, layer_names = _image_layout(archive)
    archive.resolve(config_name)
    layers = [archive.resolve(name) for name in layer_names]
    return SavedImage(
        config=archive.content(config_name),
        layers=[e.path for e in layers],
        diff_ids=[e.diff_id for e in layers],
        workdir=workdir,
        manifest_digest=manifest_digest,
        layout=layout,
    )


@dataclass
class _Archive:
    """What ``read_saved`` took from the tar stream: its files on disk (hashed), its small
    JSON documents in memory, and its links, followed by name."""

    what: str
    files: dict[str, _Entry] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, name: str) -> _Entry:
        """The file NAME (or the link NAME) stands for; a SaveError when it is absent."""
        seen = name
        for _ in range(8):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                break
            name = self.links[name]
        raise SaveError(f"the export of {self.what} names {seen}, which the archive does not hold")

    def content(self, name: str) -> bytes:
        return _content(name, self.small, self.files, self.links, self.resolve)

    def document(self, name: str) -> Any:
        try:
            return json.loads(self.content(name))
        except ValueError:
            raise SaveError(f"the export of {self.what}: {name} is not JSON") from None


def _unpack(
    stream: IO[bytes],
    workdir: Path,
    what: str,
    keep: Callable[[str], bool] | None,
    on_file: Callable[[str, Path], None] | None = None,
) -> _Archive:
    """Every member of the save stream, in one pass: a link recorded, a layout document
    kept in memory, any other file copied to ``workdir`` and hashed (and deleted at once
    when ``keep(diff_id)`` is false; else ``on_file(diff_id, path)`` is told of it while
    the stream goes on)."""
    archive = _Archive(what)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for n, member in enumerate(tar):
            if member.issym() or member.islnk():
                base = os.path.dirname(member.name) if member.issym() else ""
                archive.links[member.name] = os.path.normpath(os.path.join(base, member.linkname))
                continue
            if not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None
            if member.name in ("manifest.json", "index.json", "oci-layout", "repositories"):
                archive.small[member.name] = source.read()
                continue
            path = workdir / f"entry-{n}"
            with path.open("wb") as out:
                diff_id, compression = _copy_member(source, out, member.name)
            if member.size < 64 * 1024 and not compression:
                archive.small[member.name] = path.read_bytes()
            if keep is not None and member.size > 1024 and not keep(diff_id):
                path.unlink()
            elif on_file is not None:
                on_file(diff_id, path)
            archive.files[member.name] = _Entry(path, diff_id, compression)
    return archive


def _image_layout(archive: _Archive) -> tuple[str, str, str, list[str]]:
    """(layout, manifest digest, config name, layer names) of the one image in the
    archive: the OCI layout's index -> manifest (one platform of a nested index), or the
    legacy manifest.json."""
    what, small = archive.what, archive.small
    if "index.json" in small:
        descriptor = _pick_manifest(archive.document("index.json"), archive, what)
        manifest_digest = str(descriptor["digest"])
        manifest = archive.document(_blob_name(manifest_digest))
        while "manifests" in manifest:  # an index inside: one platform of it
            descriptor = _pick_manifest(manifest, archive, what)
            manifest_digest = str(descriptor["digest"])
            manifest = archive.document(_blob_name(manifest_digest))
        config_name = _blob_name(str(manifest["config"]["digest"]))
        layer_names = [_blob_name(str(layer["digest"])) for layer in manifest.get("layers") or []]
        return "oci", manifest_digest, config_name, layer_names
    if "manifest.json" in small:
        entries = json.loads(small["manifest.json"])
        if not entries:
            raise SaveError(f"the export of {what} has an empty manifest.json")
        config_name = str(entries[0]["Config"])
        return "legacy", "", config_name, [str(name) for name in entries[0]["Layers"]]
    raise SaveError(f"the export of {what} holds neither manifest.json nor index.json")


def _content(
    name: str,
    small: Mapping[str, bytes],
    files: Mapping[str, _Entry],
    links: Mapping[str, str],
    resolve: Callable[[str], _Entry],
) -> bytes:
    """The bytes of a small document (kept in memory, under its name or a link's)."""
    for _ in range(8):
        if name in small:
            return small[name]
        if name not in links:
            break
        name = links[name]
    return resolve(name).path.read_bytes()


def _blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _pick_manifest(index: Mapping[str, Any], archive: _Archive, what: str) -> Mapping[str, Any]:
    """The image manifest an OCI index points at: the first whose blob the archive holds,
    attestation manifests (``vnd.docker.reference.type``) left aside."""
    candidates = [
        d
        for d in index.get("manifests") or []
        if (d.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
    ]
    for descriptor in candidates:
        name = _blob_name(str(descriptor.get("digest", "")))
        if name in archive.files or name in archive.links:
            return descriptor  # type: ignore[no-any-return]
    raise SaveError(f"the export of {what} holds no manifest its index.json names")


def _counted(chunks: Iterable[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    for chunk in chunks:
        progress(len(chunk))
        yield chunk


def save_image(
    client: docker.DockerClient,
    image: str,
    workdir: Path,
    *,
    keep: Callable[[str], bool] | None = None,
    progress: Callable[[int], None] | None = None,
    on_file: Callable[[str, Path], None] | None = None,
) -> SavedImage:
    """``docker save`` ``image`` into ``workdir`` (see ``read_saved``); ``progress(n)`` is
    told of every ``n`` bytes the engine sends."""
    with engine_errors(f"exporting {image}"):
        stream = client.images.get(image).save(named=False)
        if progress is not None:
            stream = _counted(stream, progress)
        reader = io.BufferedReader(ChunkReader(stream), buffer_size=_CHUNK)
        try:
            return read_saved(reader, workdir, what=image, keep=keep, on_file=on_file)
        except tarfile.TarError as exc:
            raise SaveError(f"the export of {image} is not a readable tar: {exc}") from None
