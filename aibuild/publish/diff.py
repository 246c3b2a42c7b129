"""``aibuild diff``: why two images are not identical.

Both images are exported (``docker save``, streamed: nothing is written to disk)
and compared on three levels:

- config: every field that differs, as a dotted path (``created``,
  ``history[3].created``, ``config.Labels.x``);
- layers, by position: their diff IDs;
- files, inside each pair of layers whose diff IDs differ: entries only in one,
  and for the rest path, type, size, mode, owner, mtime, link target and the
  sha256 of the content.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any

from aibuild.engine import ChunkReader, decompressed, engine_errors
from aibuild.errors import PublishError
from aibuild.oci.media import CHUNK

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

_SMALL = 4 << 20
_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class FileEntry:
    """One layer entry as compared: what a reproducible build must reproduce."""

    path: str
    kind: str
    size: int
    mode: str
    owner: str  # "uid:gid"
    mtime: int
    link: str
    sha256: str  # content digest ("" for non-files)
    xattrs: str  # sorted "key=value" of extended attributes ("" when none)


@dataclass
class Layer:
    diff_id: str
    files: dict[str, FileEntry] = field(default_factory=dict)


@dataclass
class Snapshot:
    """An exported image: its config and its layers' listings."""

    ref: str
    image_id: str
    config: dict[str, Any]
    layers: list[Layer]


class _HashingReader(io.RawIOBase):
    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        data = self.source.read(len(target))
        n = len(data)
        target[:n] = data
        self.sha.update(data)
        return n


def _entry(member: tarfile.TarInfo, tar: tarfile.TarFile) -> FileEntry:
    digest = ""
    if member.isreg():
        handle = tar.extractfile(member)
        assert handle is not None
        sha = hashlib.sha256()
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
        digest = sha.hexdigest()
    xattrs = sorted(
        f"{k.split('xattr.', 1)[1]}={v}" for k, v in member.pax_headers.items() if "xattr." in k
    )
    return FileEntry(
        path=member.name,
        kind=_KINDS.get(member.type, member.type.decode("ascii", "replace")),
        size=member.size if member.isreg() else 0,
        mode=oct(member.mode),
        owner=f"{member.uid}:{member.gid}",
        mtime=int(member.mtime),
        link=member.linkname,
        sha256=digest,
        xattrs=",".join(xattrs),
    )


def _read_layer(source: IO[bytes]) -> tuple[str, dict[str, FileEntry] | None]:
    """(sha256 of the bytes, listing or None when they are not a tar)."""
    reader = _HashingReader(source)
    files: dict[str, FileEntry] | None = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, CHUNK), mode="r|") as tar:
            for member in tar:
                assert files is not None
                files[member.name] = _entry(member, tar)
    except tarfile.TarError:
        files = None
    while reader.read(CHUNK):
        pass
    return "sha256:" + reader.sha.hexdigest(), files


def snapshot(client: docker.DockerClient, image: str) -> Snapshot:
    """Export ``image`` and list every file of every layer (streamed). Either layout of
    ``docker save`` (see ``aibuild.engine.read_saved``); gzip layers are listed through
    their uncompressed bytes, so layers are keyed by diff ID on every engine."""

    with engine_errors(f"exporting {image}"):
        found = client.images.get(image)
        diff_ids: list[str] = list(found.attrs["RootFS"]["Layers"])
        listings: dict[str, dict[str, FileEntry]] = {}
        documents: dict[str, Any] = {}  # sha256 of the bytes -> parsed JSON
        stream = io.BufferedReader(ChunkReader(found.save(named=False)), CHUNK)
        with tarfile.open(fileobj=stream, mode="r|") as outer:
            for member in outer:
                if not member.isreg():
                    continue
                handle = outer.extractfile(member)
                assert handle is not None
                source: IO[bytes] = decompressed(handle, member.name)
                if member.size < _SMALL:  # a config, metadata, or a small layer
                    data = source.read()
                    with contextlib.suppress(ValueError):
                        documents["sha256:" + hashlib.sha256(data).hexdigest()] = json.loads(data)
                        continue
                    source = io.BytesIO(data)
                digest, files = _read_layer(source)
                if files is not None:
                    listings[digest] = files
    config = _config_document(documents, found.id)
    if config is None:
        raise PublishError(f"the export of {image} holds no config for its ID {found.id}")
    layers = [Layer(d, listings.get(d, {})) for d in diff_ids]
    return Snapshot(image, found.id, config, layers)


def _config_document(documents: Mapping[str, Any], image_id: str) -> dict[str, Any] | None:
    """The image config among an export's JSON documents: the one with the image ID as
    its digest (classic store), or the one that manifest names (containerd store)."""
    document = documents.get(image_id)
    for _ in range(4):
        if not isinstance(document, dict):
            return None
        if "rootfs" in document:
            return document
        if isinstance(document.get("config"), dict):
            document = documents.get(str(document["config"].get("digest")))
        elif isinstance(document.get("manifests"), list):  # an index: its first image
            found = [documents.get(str(m.get("digest"))) for m in document["manifests"]]
            document = next((d for d in found if isinstance(d, dict)), None)
        else:
            return None
    return None


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts and lists -> (dotted path, leaf value)."""
    if isinstance(value, Mapping):
        if not value and prefix:
            yield prefix, {}
        for key in sorted(value):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        if not value and prefix:
            yield prefix, []
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


@dataclass(frozen=True)
class Change:
    """One difference: ``what`` (a config path or a file path) and the two sides."""

    what: str
    a: Any
    b: Any


@dataclass
class LayerDiff:
    index: int
    a: str  # diff ID ("" when the image has no layer here)
    b: str
    files: list[Change] = field(default_factory=list)


@dataclass
class ImageDiff:
    a: str
    b: str
    a_id: str
    b_id: str
    config: list[Change]
    layers: list[LayerDiff]

    @property
    def identical(self) -> bool:
        return self.a_id == self.b_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"identical": self.identical}


_FIELDS = ("kind", "size", "mode", "owner", "mtime", "link", "sha256", "xattrs")


def compare_files(a: Mapping[str, FileEntry], b: Mapping[str, FileEntry]) -> list[Change]:
    """The entries that differ between two layer listings, sorted by path."""
    changes: list[Change] = []
    for path in sorted(set(a) | set(b)):
        left, right = a.get(path), b.get(path)
        if left is None or right is None:
            changes.append(
                Change(path, "present" if left else "absent", "present" if right else "absent")
            )
            continue
        fields_a = {f: getattr(left, f) for f in _FIELDS if getattr(left, f) != getattr(right, f)}
        if fields_a:
            fields_b = {f: getattr(right, f) for f in fields_a}
            changes.append(Change(path, fields_a, fields_b))
    return changes


def compare(a: Snapshot, b: Snapshot) -> ImageDiff:
    """Compare two snapshots: config fields, layer diff IDs, files in differing layers."""
    flat_a, flat_b = dict(flatten(a.config)), dict(flatten(b.config))
    config = [
        Change(key, flat_a.get(key), flat_b.get(key))
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]
    layers: list[LayerDiff] = []
    for index in range(max(len(a.layers), len(b.layers))):
        la = a.layers[index] if index < len(a.layers) else Layer("")
        lb = b.layers[index] if index < len(b.layers) else Layer("")
        if la.diff_id == lb.diff_id:
            continue
        layers.append(LayerDiff(index, la.diff_id, lb.diff_id, compare_files(la.files, lb.files)))
    return ImageDiff(a.ref, b.ref, a.image_id, b.image_id, config, layers)


def diff_images(client: docker.DockerClient, a: str, b: str) -> ImageDiff:
    """What differs between local images ``a`` and ``b``."""
    return compare(snapshot(client, a), snapshot(client, b))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return json.dumps(value) if not isinstance(value, str) else value


def format_diff(diff: ImageDiff, *, max_files: int = 50) -> str:
    """A human-readable report; ``max_files`` entries shown per layer."""
    if diff.identical:
        return f"identical: {diff.a} and {diff.b} are both {diff.a_id}"
    lines = [f"A: {diff.a} ({diff.a_id[:19]})", f"B: {diff.b} ({diff.b_id[:19]})"]
    if diff.config:
        lines.append(f"config: {len(diff.config)} field(s) differ")
        lines.extend(f"  {c.what}: {_show(c.a)} != {_show(c.b)}" for c in diff.config)
    else:
        lines.append("config: no field differs apart from the layers")
    if not diff.layers:
        lines.append("layers: all identical")
    for layer in diff.layers:
        lines.append(
            f"layer {layer.index + 1}: {layer.a[:19] or '(none)'} != {layer.b[:19] or '(none)'}"
            f" ({len(layer.files)} entr{'y' if len(layer.files) == 1 else 'ies'} differ)"
        )
        for change in layer.files[:max_files]:
            if isinstance(change.a, str):
                lines.append(f"  {change.what}: only in {'A' if change.a == 'present' else 'B'}")
            else:
                lines.append(f"  {change.what}: {_show(change.a)} != {_show(change.b)}")
        if len(layer.files) > max_files:
            lines.append(f"  ... and {len(layer.files) - max_files} more (--json shows all)")
        if not layer.files:
            lines.append("  same entries and contents: only the tar encoding differs")
    return "\n".join(lines)
