"""The normaliser: what a reproducible build needs and the builder cannot do.

The renderer (``RenderOptions(reproducible=True)``) removes what differs *inside*
files: apt caches and logs go in the same RUN, byte-code is compiled with
``--invalidation-mode unchecked-hash``, SOURCE_DATE_EPOCH is set. Two ``--no-cache``
builds still differ in metadata the classic builder writes; ``normalise_image``
rewrites it, then loads the result back into the engine (``docker save`` ->
rewrite -> ``docker load``):

Layers above the base (the base layers are kept byte for byte):

- entries sorted by path, a hard link's target always written before the link;
- every mtime clamped to SOURCE_DATE_EPOCH (never raised: older package files keep theirs);
- hard links: the smallest name of a group is the file, the others link to it;
- whiteouts get mode 0 and the epoch as mtime; opaque whiteouts on a directory that
  exists below become explicit whiteouts (the containerd store's form); a regular file
  or symlink equal to the one below it (mtime aside: a file a step only touched), and a
  directory only touched, are left out. These make the classic and the containerd
  image stores give the same layer (docs/engines.md);
- owner names blanked (uid/gid kept), modes, whiteouts, device numbers and
  extended attributes (``SCHILY.xattr.*``) kept; other PAX records (atime,
  ctime, sub-second mtime) dropped;
- content rules (``DROP_RULES``): files that change on every build and that no
  program needs are left out (ldconfig's aux-cache, apt's binary caches and
  package lists, dpkg/apt logs, pip's cache) and so are timestamp-based ``.pyc``
  files: their header holds the source mtime, which clamping makes stale, so
  they could never be both valid and reproducible. Python recompiles them in
  memory when needed.

The config: ``created`` and every history time set to SOURCE_DATE_EPOCH, the build
container's fields (``container``, ``container_config``, ``config.Image``,
``config.Hostname``) and ``docker_version`` dropped, ``rootfs.diff_ids`` replaced,
empty fields of ``config`` (false, null, "") dropped, the label
``ai.aibuild.reproducible=<SOURCE_DATE_EPOCH>`` added, written as
canonical JSON (sorted keys, no spaces). The image ID is the sha256 of that JSON.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild import labels
from aibuild.engine import SavedImage, engine_errors, save_image
from aibuild.errors import PublishError
from aibuild.logs import Log, silent
from aibuild.oci.archive import HashingWriter, disk_errors, load_image
from aibuild.oci.media import CHUNK, EPOCH_MAX, rfc3339
from aibuild.oci.reference import parse_reference

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

    from aibuild.oci.archive import BlobCache

XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")

# (glob on the entry path, why it is left out). Only entries in the layers above the
# base are affected; where the base has the same path, its version shows through.
DROP_RULES: tuple[tuple[str, str], ...] = (
    ("var/cache/ldconfig/aux-cache", "ldconfig's cache of file times"),
    ("var/cache/apt/*.bin", "apt's binary package caches, rebuilt on demand"),
    ("var/cache/apt/archives/*.deb", "downloaded packages"),
    ("var/cache/debconf/*-old", "debconf's backup copies"),
    ("var/lib/apt/lists/*_*", "package lists: they change with the mirror"),
    ("var/log/apt/*", "apt's logs"),
    ("var/log/dpkg.log", "dpkg's log"),
    ("var/log/alternatives.log", "update-alternatives' log"),
    ("var/log/bootstrap.log", "debootstrap's log"),
    ("root/.cache/pip/*", "pip's download and wheel cache"),
)


def drop_reason(path: str) -> str | None:
    """Why a layer entry is left out by the content rules (None when it is kept)."""
    for pattern, why in DROP_RULES:
        if fnmatch.fnmatchcase(path, pattern):
            return why
    return None


def is_timestamp_pyc(name: str, head: bytes) -> bool:
    """A ``.pyc`` whose header validates by source mtime (PEP 552 flags == 0)."""
    return name.endswith(".pyc") and len(head) >= 8 and int.from_bytes(head[4:8], "little") == 0


@dataclass
class LayerReport:
    """What normalising one layer changed."""

    diff_id: str  # the new one
    source_diff_id: str
    entries: int = 0
    clamped: int = 0
    dropped: list[str] = field(default_factory=list)


def _normalised_info(member: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.name)
    info.type = member.type
    info.mode = member.mode
    info.uid, info.gid = member.uid, member.gid
    info.uname = info.gname = ""
    info.size = member.size if member.isreg() else 0
    # Only links have targets (Docker 20.10 leaves stale link names on whiteouts).
    info.linkname = member.linkname if member.issym() or member.islnk() else ""
    info.devmajor, info.devminor = member.devmajor, member.devminor
    info.mtime = min(int(member.mtime), epoch)
    if _is_whiteout(member.name):
        # Docker 20.10 and the classic store write whiteouts 0600, the containerd
        # store 0000, and their mtimes differ too (0, or the build's time): the mode and
        # the mtime of a whiteout mean nothing.
        info.mode = 0
        info.mtime = epoch
    info.pax_headers = {k: v for k, v in member.pax_headers.items() if k.startswith(XATTR_PREFIXES)}
    return info


def _short(digests: Sequence[str]) -> str:
    return "[" + ", ".join(d.removeprefix("sha256:")[:12] for d in digests) + "]"


def _path(name: str) -> str:
    """A layer entry's path as one spelling (``./etc/x`` in an imported base is ``etc/x``)."""
    return name.removeprefix("./").rstrip("/")


def _is_whiteout(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(".wh.")


# What a file is, mtime aside: (type, mode, uid, gid, size, content sha256, link, xattrs).
Signature = tuple[bytes, int, int, int, int, str, str, str]


def _signature(member: tarfile.TarInfo, tar: tarfile.TarFile) -> Signature | None:
    """The signature of a regular file or symlink (None for other entries)."""
    if not (member.isreg() or member.issym() or member.isdir()):
        return None
    sha = hashlib.sha256()
    if member.isreg():
        handle = tar.extractfile(member)
        assert handle is not None
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    xattrs = ",".join(
        f"{k}={v}" for k, v in sorted(member.pax_headers.items()) if k.startswith(XATTR_PREFIXES)
    )
    return (
        member.type, member.mode & 0o7777, member.uid, member.gid,
        member.size if member.isreg() else 0,
        sha.hexdigest(), member.linkname, xattrs,
    )  # fmt: skip


def apply_layer(files: dict[str, Signature], layer: Path) -> None:
    """Update ``files`` (path -> signature of what a container sees) with a layer on top:
    its whiteouts delete, its regular files and symlinks replace."""
    with tarfile.open(layer, "r:") as tar:
        for member in tar:
            name = _path(member.name)
            head, _, base = name.rpartition("/")
            if base == ".wh..wh..opq":
                prefix = f"{head}/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
                continue
            if base.startswith(".wh."):
                gone = f"{head}/{base[4:]}" if head else base[4:]
                files.pop(gone, None)
                for path in [p for p in files if p.startswith(gone + "/")]:
                    del files[path]
                continue
            signature = _signature(member, tar)
            if signature is None:
                files.pop(name, None)
            else:
                files[name] = signature


def _explicit_whiteouts(
    members: Sequence[tarfile.TarInfo], below: Mapping[str, Signature], below_dirs: set[str]
) -> tuple[set[str], list[tarfile.TarInfo]]:
    """Opaque whiteouts on directories that exist below, as explicit whiteouts.

    A step that removes a directory and writes it again (uv replacing a package) gives, in
    the classic store's diff, an opaque whiteout and the directory's new entries; the
    containerd store compares trees and writes a whiteout for each path below that is
    gone (the highest one of a removed subtree). The second form is the canonical one:
    returns (the opaque whiteouts to drop, the whiteouts to add)."""
    present: set[str] = set()
    for member in members:
        path = _path(member.name)
        present.add(path)
        present.update(path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1))
    opaque: set[str] = set()
    added: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = _path(member.name)
        head, _, base = name.rpartition("/")
        if base != ".wh..wh..opq" or head not in below_dirs:
            continue
        opaque.add(member.name)
        lead = member.name[: member.name.index(name)]  # "./" where the layer writes it
        for path in sorted({*below, *below_dirs}):
            if not path.startswith(head + "/"):
                continue
            parts = path[len(head) + 1 :].split("/")
            for depth in range(1, len(parts) + 1):
                gone = f"{head}/{'/'.join(parts[:depth])}"
                if gone not in present:
                    parent, _, leaf = gone.rpartition("/")
                    info = tarfile.TarInfo(f"{lead}{parent}/.wh.{leaf}")
                    info.mtime, info.mode = int(member.mtime), 0
                    added.setdefault(info.name, info)
                    break
    return opaque, list(added.values())


def normalise_layer(
    src: Path, dst: Path, epoch: int, below: Mapping[str, Signature] | None = None
) -> LayerReport:
    """Rewrite one uncompressed layer tar per the rules above; returns its new diff ID.

    ``below``: what the layers under this one hold (``apply_layer``). A regular file or
    symlink that is the same as below in everything but its mtime is left out: the
    classic store's diff includes a file a build step only touched (useradd's
    ``/etc/.pwd.lock``), the containerd store's leaves it out."""
    report = LayerReport("", _file_digest(src))
    with tarfile.open(src, "r:") as tar:
        members = tar.getmembers()
        dropped = _dropped_by_rule(tar, members)
        synthetic: set[str] = set()
        if below is not None:
            members, synthetic = _drop_unchanged(tar, members, below, dropped)
        by_name = {m.name: m for m in members}
        # A hard link to a dropped file goes with it.
        dropped |= {m.name for m in members if m.islnk() and m.linkname in dropped}
        report.dropped = sorted(dropped)
        links = _link_groups(members, by_name, dropped)
        with dst.open("wb") as out:
            writer = HashingWriter(out)
            with tarfile.open(
                fileobj=writer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8"
            ) as result:
                layer = _LayerWriter(tar, result, by_name, dropped, synthetic, links, epoch)
                for member in sorted(members, key=lambda m: m.name):
                    layer.emit(member)
    report.entries, report.clamped = layer.entries, layer.clamped
    report.diff_id = writer.digest
    return report


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _dropped_by_rule(tar: tarfile.TarFile, members: Sequence[tarfile.TarInfo]) -> set[str]:
    """The regular files the rules above leave out (``drop_reason``, timestamp-based
    byte-code)."""
    dropped: set[str] = set()
    for member in members:
        reason = drop_reason(member.name) if member.isreg() else None
        if reason is None and member.isreg() and member.name.endswith(".pyc"):
            content = tar.extractfile(member)
            assert content is not None
            if is_timestamp_pyc(member.name, content.read(16)):
                reason = "timestamp-based byte-code"
        if reason is not None:
            dropped.add(member.name)
    return dropped


def _drop_unchanged(
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    below: Mapping[str, Signature],
    dropped: set[str],
) -> tuple[list[tarfile.TarInfo], set[str]]:
    """The layer against what lies below it: (its members with the explicit whiteouts that
    replace an opaque one, the names of those whiteouts). Adds to ``dropped`` what only
    repeats below: a file or symlink the same but for its mtime, a directory only
    touched, an opaque whiteout on a directory new here."""
    linked = {m.linkname for m in members if m.islnk()}
    below_dirs = {p.rsplit("/", i)[0] for p in below for i in range(1, p.count("/") + 1)}
    opaque, whiteouts = _explicit_whiteouts(members, below, below_dirs)
    dropped |= opaque
    synthetic = {w.name for w in whiteouts}
    members = [*members, *whiteouts]
    # Files first; then directories, deepest first: a directory stays when an entry
    # under it stays, is new, or differs from below; one only touched goes (the
    # classic store's diff lists /tmp when a step wrote and removed a file there,
    # the containerd store's does not).
    kept_under: set[str] = set()

    def keep(path: str) -> None:
        kept_under.update(path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1))

    for member in sorted(members, key=lambda m: (m.isdir(), -_path(m.name).count("/"))):
        name = _path(member.name)
        head, _, base = name.rpartition("/")
        if base == ".wh..wh..opq" and head not in below_dirs:
            # An opaque whiteout on a directory new in this layer hides nothing
            # (Docker 20.10 writes one, the containerd store does not).
            dropped.add(member.name)
            continue
        if member.name in dropped:
            continue
        if member.isdir() and name in kept_under:
            keep(name)
            continue
        if (
            name not in linked
            and name in below
            and member.name not in synthetic
            and _signature(member, tar) == below[name]
        ):
            dropped.add(member.name)
            continue
        keep(name)
    return members, synthetic


@dataclass(frozen=True)
class _LinkGroups:
    """Hard links: which name of a group is the file and which are links differs by
    engine (Docker 20.10 and the classic store: the first name found; the containerd
    store: another). Here the smallest name is the file."""

    canonical: dict[str, str]  # every name of a group -> the group's file name
    roots: dict[str, tarfile.TarInfo]  # every name of a group -> the member holding the file


def _link_groups(
    members: Sequence[tarfile.TarInfo],
    by_name: Mapping[str, tarfile.TarInfo],
    dropped: set[str],
) -> _LinkGroups:
    canonical: dict[str, str] = {}
    roots: dict[str, tarfile.TarInfo] = {}
    groups: dict[str, list[str]] = {}
    for member in members:
        if not member.islnk() or member.name in dropped:
            continue
        root = member
        for _ in range(8):
            if not root.islnk() or root.linkname not in by_name:
                break
            root = by_name[root.linkname]
        if root.isreg() and root.name not in dropped:
            groups.setdefault(root.name, [root.name]).append(member.name)
    for root_name, names in groups.items():
        first = min(names)
        for name in names:
            canonical[name] = first
            roots[name] = by_name[root_name]
    return _LinkGroups(canonical, roots)


class _LayerWriter:
    """Writes the kept members, normalised, into the new layer: each name once, a link's
    target before it, a hard-link group as its smallest name and links to it."""

    def __init__(
        self,
        tar: tarfile.TarFile,
        result: tarfile.TarFile,
        by_name: Mapping[str, tarfile.TarInfo],
        dropped: set[str],
        synthetic: set[str],
        links: _LinkGroups,
        epoch: int,
    ) -> None:
        self.tar, self.result, self.by_name = tar, result, by_name
        self.dropped, self.synthetic, self.links, self.epoch = dropped, synthetic, links, epoch
        self.written: set[str] = set()
        self.entries = 0
        self.clamped = 0

    def emit(self, member: tarfile.TarInfo) -> None:
        if member.name in self.written or member.name in self.dropped:
            return
        if member.name in self.links.canonical:
            self.emit_linked(member.name)
            return
        if member.islnk() and member.linkname in self.by_name:
            self.emit(self.by_name[member.linkname])  # the target first
        self.written.add(member.name)
        info = _normalised_info(member, self.epoch)
        self.entries += 1
        self.clamped += info.mtime != int(member.mtime)
        if member.isreg() and member.name not in self.synthetic:
            self.result.addfile(info, self.tar.extractfile(member))
        else:
            self.result.addfile(info)

    def emit_linked(self, name: str) -> None:
        first, root = self.links.canonical[name], self.links.roots[name]
        if first not in self.written and first != name:
            self.emit_linked(first)
        self.written.add(name)
        info = _normalised_info(root, self.epoch)
        info.name = name
        self.entries += 1
        self.clamped += info.mtime != int(root.mtime)
        if name == first:
            self.result.addfile(info, self.tar.extractfile(root))
        else:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            self.result.addfile(info)


def normalise_config(
    raw: bytes,
    diff_ids: Sequence[str],
    epoch: int,
    extra_labels: Mapping[str, str] | None = None,
) -> bytes:
    """The image config with build-time noise removed, as canonical JSON bytes."""
    config: dict[str, Any] = json.loads(raw)
    stamp = rfc3339(epoch)
    config["created"] = stamp
    for entry in config.get("history") or []:
        entry["created"] = stamp
    for key in ("container", "container_config", "docker_version"):
        config.pop(key, None)
    inner = config.setdefault("config", {}) or {}
    config["config"] = inner
    inner.pop("Image", None)
    inner.pop("Hostname", None)
    # The classic store writes every field (``"Tty": false``, ``"Cmd": null``), the
    # containerd store leaves the empty ones out: they mean the same.
    for key in [k for k, v in inner.items() if v is None or v is False or v == ""]:
        del inner[key]
    merged = dict(inner.get("Labels") or {})
    merged.update(extra_labels or {})
    merged[labels.REPRODUCIBLE] = str(epoch)
    inner["Labels"] = merged
    config["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def base_layer_count(
    client: docker.DockerClient, layers: Sequence[str], base: str | None
) -> tuple[int, str]:
    """How many of ``layers`` belong to the base image, and which image that is.

    With ``base`` given, its layers must be a prefix of ``layers``. Without it, the
    tagged local image with the longest strict prefix is taken (the image the
    build started FROM); an image with no such base keeps no layer as is.
    """

    with engine_errors("listing images"):
        if base:
            found = client.images.get(base)
            prefix = list(found.attrs["RootFS"].get("Layers") or [])
            if list(layers[: len(prefix)]) != prefix or len(prefix) >= len(layers):
                raise PublishError(
                    f"{base} is not the base of this image: its layers are not a strict "
                    "prefix of the image's"
                )
            return len(prefix), base
        best, name = 0, ""
        for candidate in client.images.list():
            prefix = list(candidate.attrs.get("RootFS", {}).get("Layers") or [])
            if best < len(prefix) < len(layers) and list(layers[: len(prefix)]) == prefix:
                best = len(prefix)
                name = (candidate.tags or [candidate.id])[0]
        return best, name


def normalised_epoch(attrs: Mapping[str, Any]) -> int | None:
    """The SOURCE_DATE_EPOCH of an image that is exactly the output of ``normalise_image``
    (its label ``ai.aibuild.reproducible=N`` and its creation time N both); None for any
    other image, including one built FROM a normalised image (it inherits the label, not
    the creation time)."""
    found = (attrs.get("Config") or {}).get("Labels") or {}
    value = str(found.get(labels.REPRODUCIBLE) or "")
    if not value.isascii() or not value.isdigit() or int(value) > EPOCH_MAX:
        return None
    return int(value) if attrs.get("Created") == rfc3339(int(value)) else None


def normalised_tag(image: str, tags: Sequence[str], image_id: str, epoch: int) -> str:
    """The tag a normalised copy of ``image`` gets, saying what it is: the source's own tag
    (the one given, else its first) with ``-reproducible-EPOCH`` appended, in the same
    repository; ``aibuild/reproducible:ID-EPOCH`` for a source without tags."""
    own = [t for t in (image, f"{image}:latest") if t in tags]
    name = own[0] if own else min(tags, default=None)
    if name is None:
        return f"aibuild/reproducible:{image_id.removeprefix('sha256:')[:12]}-{epoch}"
    ref = parse_reference(name)
    suffix = f"-reproducible-{epoch}"
    return f"{ref.name}:{(ref.tag or 'latest')[: 128 - len(suffix)]}{suffix}"


@dataclass
class NormaliseResult:
    """A normalised image: its new ID, what changed, how long it took."""

    image_id: str  # the engine's ID (config digest, or manifest digest: containerd store)
    source_id: str
    tags: list[str]
    source_date_epoch: int
    base: str
    base_layers: int
    layers: list[LayerReport]
    seconds: float
    config_digest: str = ""  # the same on every engine

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "config_digest": self.config_digest,
            "source_id": self.source_id,
            "tags": self.tags,
            "source_date_epoch": self.source_date_epoch,
            "base": self.base,
            "base_layers": self.base_layers,
            "layers": [
                {
                    "diff_id": r.diff_id,
                    "source_diff_id": r.source_diff_id,
                    "entries": r.entries,
                    "clamped": r.clamped,
                    "dropped": len(r.dropped),
                }
                for r in self.layers
            ],
            "seconds": self.seconds,
        }


def normalise_image(
    client: docker.DockerClient,
    image: str,
    *,
    source_date_epoch: int,
    base: str | None = None,
    tags: Sequence[str] = (),
    extra_labels: Mapping[str, str] | None = None,
    cache: BlobCache | None = None,
    workdir: Path | None = None,
    log: Log = silent,
) -> NormaliseResult:
    """Normalise local ``image`` and load the result under ``tags`` (none by default: the
    source and its tags stay as they are; a caller that means to move tags names them).

    ``base``: the image the build started FROM (its layers are kept as they are);
    found among tagged local images when not given. ``extra_labels`` are added to the
    config. With ``cache``, the layers are also gzipped into the blob cache, so a
    following direct push need not export the image again. An image that is itself
    the output of normalising (``normalised_epoch``) is refused unless ``source_date_epoch``
    is its own: normalising it again would not give what its source gives.
    """

    started = time.monotonic()
    source_id, layers = _source_image(client, image, source_date_epoch)
    keep_tags = list(tags)
    count, base_name = base_layer_count(client, layers, base)
    log(f"normalising {image}: {len(layers) - count} layer(s) above base {base_name or '(none)'}")
    with (
        disk_errors(f"normalising {image}"),
        tempfile.TemporaryDirectory(prefix="aibuild-normalise-") as tmp,
    ):
        work = Path(workdir or tmp)
        saved = save_image(client, source_id, work / "saved")
        if saved.diff_ids != layers:
            raise PublishError(
                f"docker save of {image} gave layers {_short(saved.diff_ids)}, not the "
                f"layers {_short(layers)} its config lists"
            )
        new_layers, reports = _normalise_layers(saved, count, source_date_epoch, work, log)
        config = normalise_config(
            saved.config, [d for d, _ in new_layers], source_date_epoch, extra_labels
        )
        image_id = load_image(client, config, new_layers, keep_tags, work, present=count)
        if cache is not None:
            cache.add_config(config, image_id)
            cache.add_layers(dict(new_layers))
    seconds = round(time.monotonic() - started, 3)
    log(f"normalised {image} -> {image_id[:19]} in {seconds:.1f}s")
    return NormaliseResult(
        image_id=image_id,
        source_id=source_id,
        tags=keep_tags,
        source_date_epoch=source_date_epoch,
        base=base_name,
        base_layers=count,
        layers=reports,
        seconds=seconds,
        config_digest="sha256:" + hashlib.sha256(config).hexdigest(),
    )


def _source_image(client: docker.DockerClient, image: str, epoch: int) -> tuple[str, list[str]]:
    """(ID, layer diff IDs) of the image to normalise; a PublishError for an image that is
    already the output of normalising with another epoch."""
    with engine_errors(f"inspecting {image}"):
        found = client.images.get(image)
    already = normalised_epoch(found.attrs)
    if already is not None and already != epoch:
        raise PublishError(
            f"{image} is already a normalised image (SOURCE_DATE_EPOCH={already}, label "
            f"{labels.REPRODUCIBLE}); normalising it with {epoch} would not give "
            "what its source gives: normalise the original image instead"
        )
    return found.id, list(found.attrs["RootFS"]["Layers"])


def _normalise_layers(
    saved: SavedImage, count: int, epoch: int, work: Path, log: Log
) -> tuple[list[tuple[str, Path]], list[LayerReport]]:
    """(diff ID, file) of every layer, the first ``count`` (the base's) as they are and
    each one above normalised against all below it; and the reports of those above."""
    reports: list[LayerReport] = []
    new_layers = [(d, saved.layers[i]) for i, d in enumerate(saved.diff_ids[:count])]
    below: dict[str, Signature] = {}
    for index in range(count):
        apply_layer(below, saved.layers[index])
    total = len(saved.diff_ids)
    for index in range(count, total):
        out = work / f"layer-{index}.tar"
        report = normalise_layer(saved.layers[index], out, epoch, below)
        apply_layer(below, out)
        reports.append(report)
        new_layers.append((report.diff_id, out))
        log(
            f"layer {index + 1}/{total}: {report.entries} entries, "
            f"{report.clamped} mtimes clamped, {len(report.dropped)} files left out"
        )
    return new_layers, reports
