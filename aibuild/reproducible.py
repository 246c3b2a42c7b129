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
the label ``ai.aibuild.reproducible=<SOURCE_DATE_EPOCH>`` added, written as
canonical JSON (sorted keys, no spaces). The image ID is the sha256 of that JSON.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild.errors import PublishError
from aibuild.publish import HashingWriter

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

    from aibuild.publish import BlobCache

REPRODUCIBLE_LABEL = "ai.aibuild.reproducible"
XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
CHUNK = 1 << 20

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


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """A local file error (a full disk, most often: an export is as large as the image)
    as one clear line instead of a traceback."""
    try:
        yield
    except OSError as exc:
        raise PublishError(
            f"{what} failed: {exc.strerror or exc} ({exc.filename or tempfile.gettempdir()}); "
            "it needs about twice the image's size free in the temporary directory (TMPDIR)"
        ) from None


def rfc3339(epoch: int) -> str:
    """SOURCE_DATE_EPOCH as the timestamp format image configs use."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    info.linkname = member.linkname
    info.devmajor, info.devminor = member.devmajor, member.devminor
    info.mtime = min(int(member.mtime), epoch)
    info.pax_headers = {k: v for k, v in member.pax_headers.items() if k.startswith(XATTR_PREFIXES)}
    return info


def normalise_layer(src: Path, dst: Path, epoch: int) -> LayerReport:
    """Rewrite one uncompressed layer tar per the rules above; returns its new diff ID."""
    source_sha = hashlib.sha256()
    with src.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            source_sha.update(chunk)
    report = LayerReport("", "sha256:" + source_sha.hexdigest())
    with tarfile.open(src, "r:") as tar:
        members = tar.getmembers()
        by_name = {m.name: m for m in members}
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
        # A hard link to a dropped file goes with it.
        dropped |= {m.name for m in members if m.islnk() and m.linkname in dropped}
        report.dropped = sorted(dropped)
        written: set[str] = set()
        with dst.open("wb") as out:
            writer = HashingWriter(out)
            with tarfile.open(
                fileobj=writer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8"
            ) as result:

                def emit(member: tarfile.TarInfo) -> None:
                    if member.name in written or member.name in dropped:
                        return
                    if member.islnk() and member.linkname in by_name:
                        emit(by_name[member.linkname])  # the target first
                    written.add(member.name)
                    info = _normalised_info(member, epoch)
                    report.entries += 1
                    report.clamped += info.mtime != int(member.mtime)
                    if member.isreg():
                        result.addfile(info, tar.extractfile(member))
                    else:
                        result.addfile(info)

                for member in sorted(members, key=lambda m: m.name):
                    emit(member)
    report.diff_id = writer.digest
    return report


def normalise_config(
    raw: bytes,
    diff_ids: Sequence[str],
    epoch: int,
    labels: Mapping[str, str] | None = None,
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
    merged = dict(inner.get("Labels") or {})
    merged.update(labels or {})
    merged[REPRODUCIBLE_LABEL] = str(epoch)
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
    from aibuild.engine import engine_errors

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


@dataclass
class NormaliseResult:
    """A normalised image: its new ID, what changed, how long it took."""

    image_id: str
    source_id: str
    tags: list[str]
    source_date_epoch: int
    base: str
    base_layers: int
    layers: list[LayerReport]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
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


def _load(
    client: docker.DockerClient,
    config: bytes,
    layers: Sequence[tuple[str, Path | None]],
    tags: Sequence[str],
    workdir: Path,
) -> str:
    """``docker load`` a config and layers; a layer whose path is None is already in the
    engine (the base) and is not sent. Returns the loaded image ID."""
    from aibuild.engine import api_message, engine_errors

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
        for diff_id, path in layers:
            if path is not None:
                tar.add(str(path), arcname=f"{diff_id.removeprefix('sha256:')}/layer.tar")
        add_bytes("manifest.json", json.dumps(manifest).encode())
    import docker as docker_module

    with engine_errors("loading the normalised image"), archive.open("rb") as handle:
        try:
            client.images.load(handle)
        except docker_module.errors.ImageLoadError as exc:
            raise PublishError(f"the engine refused the normalised image: {exc}") from None
        except docker_module.errors.APIError as exc:
            raise PublishError(
                f"the engine refused the normalised image: {api_message(exc)}"
            ) from None
        client.images.get(image_id)  # it is there, under exactly this ID
    return image_id


def normalise_image(
    client: docker.DockerClient,
    image: str,
    *,
    source_date_epoch: int,
    base: str | None = None,
    tags: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    cache: BlobCache | None = None,
    workdir: Path | None = None,
    log: Progress = _quiet,
) -> NormaliseResult:
    """Normalise local ``image`` and load it back under its tags (or ``tags``).

    ``base``: the image the build started FROM (its layers are kept as they are);
    found among tagged local images when not given. ``labels`` are added to the
    config. With ``cache``, the layers are also gzipped into the blob cache, so a
    following direct push need not export the image again.
    """
    from aibuild.engine import engine_errors
    from aibuild.publish import save_image

    started = time.monotonic()
    with engine_errors(f"inspecting {image}"):
        found = client.images.get(image)
    source_id: str = found.id
    layers: list[str] = list(found.attrs["RootFS"]["Layers"])
    keep_tags = list(tags) if tags is not None else list(found.tags)
    count, base_name = base_layer_count(client, layers, base)
    log(f"normalising {image}: {len(layers) - count} layer(s) above base {base_name or '(none)'}")
    with (
        disk_errors(f"normalising {image}"),
        tempfile.TemporaryDirectory(prefix="aibuild-normalise-") as tmp,
    ):
        work = Path(workdir or tmp)
        saved = save_image(client, source_id, work / "saved")
        if saved.diff_ids != layers:
            raise PublishError(f"docker save of {image} did not give the layers it reports")
        reports: list[LayerReport] = []
        new_layers: list[tuple[str, Path | None]] = [(d, None) for d in layers[:count]]
        for index in range(count, len(layers)):
            out = work / f"layer-{index}.tar"
            report = normalise_layer(saved.layers[index], out, source_date_epoch)
            reports.append(report)
            new_layers.append((report.diff_id, out))
            log(
                f"layer {index + 1}/{len(layers)}: {report.entries} entries, "
                f"{report.clamped} mtimes clamped, {len(report.dropped)} files left out"
            )
        config = normalise_config(
            saved.config, [d for d, _ in new_layers], source_date_epoch, labels
        )
        image_id = _load(client, config, new_layers, keep_tags, work)
        if cache is not None:
            cache.add_config(config)
            cache.add_layers({d: path or saved.layers[i] for i, (d, path) in enumerate(new_layers)})
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
    )


__all__ = [
    "DROP_RULES",
    "REPRODUCIBLE_LABEL",
    "LayerReport",
    "NormaliseResult",
    "base_layer_count",
    "drop_reason",
    "finish_reproducible",
    "is_timestamp_pyc",
    "normalise_config",
    "normalise_image",
    "normalise_layer",
    "rfc3339",
]


def finish_reproducible(
    client: docker.DockerClient,
    result: Any,
    *,
    source_date_epoch: int,
    labels: Mapping[str, str] | None = None,
    wheelhouse: Path | None = None,
    cache: BlobCache | None = None,
    log: Progress = _quiet,
) -> NormaliseResult:
    """After ``build.build_image`` rendered with ``reproducible=True``: write the SBOM
    beside the build record, add it to the image as a layer, normalise the image
    (base: the plan's runtime image) and note both in the record.

    ``result`` is the build's ``BuildResult``; its tags move to the normalised image.
    """
    from aibuild.lock import wheel_hashes
    from aibuild.sbom import attach_sbom, cyclonedx, sbom_bytes, write_beside

    plan = result.plan
    hashes: dict[str, list[str]] = {}
    for (name, _), digests in wheel_hashes(wheelhouse).items():
        hashes.setdefault(name, []).extend(digests)
    document = cyclonedx(
        result.python_packages,
        result.os_packages,
        image_name=plan.image_name,
        image_version=plan.image_tag,
        os_name=plan.os,
        source_date_epoch=source_date_epoch,
        hashes=hashes,
    )
    sbom_path = write_beside(result.record_path, document)
    with_sbom = attach_sbom(client, result.image_id, sbom_bytes(document), result.tags)
    log(f"SBOM: {sbom_path} and {with_sbom[:19]}:/usr/share/aibuild/sbom.cdx.json")
    normalised = normalise_image(
        client,
        with_sbom,
        source_date_epoch=source_date_epoch,
        base=plan.runtime_image,
        tags=result.tags,
        labels=labels,
        cache=cache,
        log=log,
    )
    record = json.loads(result.record_path.read_text(encoding="utf-8"))
    record["reproducible"] = normalised.to_dict()
    record["sbom"] = str(sbom_path)
    text = json.dumps(record, indent=2) + "\n"
    result.record_path.write_text(text, encoding="utf-8")
    latest = result.record_path.with_name("latest.json")
    if latest.is_file():
        latest.write_text(text, encoding="utf-8")
    return normalised
