"""The engine boundary's readers, without Docker: both ``docker save`` layouts, push
stream digests, load stream IDs and the image store from ``docker info``.

The archives are written here the way each store writes them: the legacy layout
(``ID/layer.tar`` + ``manifest.json``, Docker 20.10), and the OCI image layout
(``index.json`` -> manifest -> ``blobs/sha256/...`` with gzip layers, the containerd
store) with the manifest.json Docker 25+ adds to it, and without it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from aibuild.engine import (
    SaveError,
    decompressed,
    image_store,
    loaded_images,
    push_digest,
    read_saved,
)
from aibuild.errors import PublishError
from aibuild.oci.archive import BlobCache, disk_errors, manifest_bytes


def _layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYERS = [
    _layer_tar({"etc/os-release": b"bookworm\n"}),
    _layer_tar(
        {
            "opt/venv/bin/python": b"\x7fELF"
            + b"".join(hashlib.sha256(bytes([i])).digest() for i in range(200))
        }
    ),
]
DIFF_IDS = [_sha(layer) for layer in LAYERS]
CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": DIFF_IDS}},
    sort_keys=True,
).encode()


def _archive(members: list[tuple[str, bytes | str]]) -> io.BytesIO:
    """A tar of (name, bytes) files and (name, "->target") symlinks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type = tarfile.SYMTYPE
                info.linkname = data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def legacy_archive() -> io.BytesIO:
    config_name = f"{_sha(CONFIG).removeprefix('sha256:')}.json"
    members: list[tuple[str, bytes | str]] = [(config_name, CONFIG)]
    names = []
    for diff_id, layer in zip(DIFF_IDS, LAYERS, strict=True):
        names.append(f"{diff_id.removeprefix('sha256:')}/layer.tar")
        members.append((names[-1], layer))
    manifest = [{"Config": config_name, "RepoTags": ["x:1"], "Layers": names}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    return _archive(members)


def oci_archive(*, with_manifest_json: bool, gzip_layers: bool = True) -> tuple[io.BytesIO, str]:
    """The containerd store's export; also the digest of its manifest (the image ID)."""
    blobs: dict[str, bytes] = {_sha(CONFIG): CONFIG}
    layer_descriptors = []
    for layer in LAYERS:
        data = gzip.compress(layer, mtime=0) if gzip_layers else layer
        blobs[_sha(data)] = data
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        layer_descriptors.append({"mediaType": media, "digest": _sha(data), "size": len(data)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(CONFIG),
                "size": len(CONFIG),
            },
            "layers": layer_descriptors,
        }
    ).encode()
    blobs[_sha(manifest)] = manifest
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _sha(manifest),
                "size": len(manifest),
            }
        ],
    }
    members: list[tuple[str, bytes | str]] = [
        (f"blobs/sha256/{d.removeprefix('sha256:')}", data) for d, data in blobs.items()
    ]
    members.append(("index.json", json.dumps(index).encode()))
    members.append(("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'))
    if with_manifest_json:
        legacy = [
            {
                "Config": f"blobs/sha256/{_sha(CONFIG).removeprefix('sha256:')}",
                "RepoTags": ["x:1"],
                "Layers": [
                    f"blobs/sha256/{d['digest'].removeprefix('sha256:')}" for d in layer_descriptors
                ],
            }
        ]
        members.append(("manifest.json", json.dumps(legacy).encode()))
    return _archive(members), _sha(manifest)


@pytest.mark.parametrize("with_manifest_json", [True, False])
def test_oci_layout_with_gzip_layers_gives_the_legacy_layouts_config_and_diff_ids(
    tmp_path: Path, with_manifest_json: bool
) -> None:
    legacy = read_saved(legacy_archive(), tmp_path / "legacy", what="x:1")
    stream, manifest_digest = oci_archive(with_manifest_json=with_manifest_json)
    oci = read_saved(stream, tmp_path / "oci", what="x:1")
    assert legacy.layout == "legacy" and oci.layout == "oci"
    assert oci.config == legacy.config == CONFIG
    assert oci.image_id == legacy.image_id == _sha(CONFIG)
    assert oci.diff_ids == legacy.diff_ids == DIFF_IDS
    assert [p.read_bytes() for p in oci.layers] == LAYERS  # decompressed on the way
    assert oci.manifest_digest == manifest_digest and legacy.manifest_digest == ""
    # Either ID names the image: the classic store's (config) and the containerd store's.
    assert oci.is_image(_sha(CONFIG)) and oci.is_image(manifest_digest)
    assert legacy.is_image(_sha(CONFIG)) and not legacy.is_image(manifest_digest)
    assert not oci.is_image("")
    # What a direct push publishes from either export: one manifest digest.
    digests = []
    for saved, name in ((legacy, "cache-legacy"), (oci, "cache-oci")):
        cache = BlobCache(tmp_path / name)
        cache.add_layers(dict(zip(saved.diff_ids, saved.layers, strict=True)))
        layers = [cache.layer(d) for d in saved.diff_ids]
        assert all(layers)
        config = cache.add_config(saved.config)
        digests.append(_sha(manifest_bytes(config, [b for b in layers if b is not None])))
    assert digests[0] == digests[1]


def test_oci_layout_with_uncompressed_layers(tmp_path: Path) -> None:
    stream, _ = oci_archive(with_manifest_json=False, gzip_layers=False)
    saved = read_saved(stream, tmp_path, what="x:1")
    assert saved.diff_ids == DIFF_IDS


def test_keep_drops_unwanted_layers_but_not_the_config(tmp_path: Path) -> None:
    stream, _ = oci_archive(with_manifest_json=False)
    saved = read_saved(stream, tmp_path, what="x:1", keep=lambda d: d == DIFF_IDS[0])
    assert saved.config == CONFIG
    assert saved.layers[0].is_file() and not saved.layers[1].exists()


def test_legacy_layout_through_symlinks(tmp_path: Path) -> None:
    """Docker 25+'s legacy manifest.json names blobs/ paths; older ones link ID/layer.tar."""
    layer_blob = f"blobs/sha256/{DIFF_IDS[0].removeprefix('sha256:')}"
    manifest = [{"Config": "config.json", "Layers": ["abc/layer.tar"]}]
    stream = _archive(
        [
            (layer_blob, LAYERS[0]),
            ("abc/layer.tar", f"->../{layer_blob}"),
            ("config.json", CONFIG),
            ("manifest.json", json.dumps(manifest).encode()),
        ]
    )
    saved = read_saved(stream, tmp_path, what="x:1")
    assert saved.diff_ids == [DIFF_IDS[0]]


def test_a_missing_file_is_named_not_blamed_on_the_disk(tmp_path: Path) -> None:
    manifest = [{"Config": "config.json", "Layers": ["gone/layer.tar"]}]
    stream = _archive([("config.json", CONFIG), ("manifest.json", json.dumps(manifest).encode())])
    with pytest.raises(SaveError, match=r"names gone/layer\.tar, which the archive does not hold"):
        read_saved(stream, tmp_path, what="x:1")
    with pytest.raises(SaveError, match=r"neither manifest\.json nor index\.json"):
        read_saved(_archive([("config.json", CONFIG)]), tmp_path, what="x:1")


def test_zstd_layers_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SaveError, match="zstd"):
        decompressed(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 20), "blobs/sha256/ab")


def test_disk_errors_hint_at_space_only_for_a_full_disk(tmp_path: Path) -> None:
    import errno

    with pytest.raises(PublishError) as missing, disk_errors("exporting x"):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "e"))
    assert "free" not in str(missing.value) and "No such file" in str(missing.value)
    with pytest.raises(PublishError, match="twice the image's size free"), disk_errors("x"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))


def test_push_digest_from_either_stream_form() -> None:
    digest = "sha256:" + "c5" * 32
    classic = {"progressDetail": {}, "aux": {"Tag": "v1", "Digest": digest, "Size": 529}}
    containerd = {"status": f"v1: digest: {digest} size: 425"}
    assert push_digest(classic) == digest
    assert push_digest(containerd) == digest
    assert push_digest({"status": "Pushed", "id": "ff5a2f8150de"}) is None
    assert push_digest({"status": "digest: sha256:short"}) is None


def test_loaded_images_from_either_store() -> None:
    ids, names = loaded_images(
        [
            {"stream": "Loaded image ID: sha256:" + "ab" * 32 + "\n"},
            {"stream": "Loaded image: x/y:1\n"},
            {"status": "Loading layer", "progressDetail": {}},
        ]
    )
    assert ids == ["sha256:" + "ab" * 32] and names == ["x/y:1"]


def test_image_store_from_docker_info() -> None:
    containerd = {
        "Driver": "overlayfs",
        "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
    }
    classic = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]}
    assert image_store(containerd) == "containerd"
    assert image_store(classic) == "classic"
    assert image_store({}) == "classic"


def test_blob_cache_finds_a_config_by_manifest_digest(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    manifest_digest = "sha256:" + "12" * 32
    assert cache.config(manifest_digest) is None
    stored = cache.add_config(CONFIG, manifest_digest)
    assert stored.digest == _sha(CONFIG)
    found = cache.config(manifest_digest)
    assert found is not None and found.digest == _sha(CONFIG)
    assert cache.config(_sha(CONFIG)) == found  # by config digest too (classic store)


class _Counting(io.RawIOBase):
    """A readable stream that counts what has been read from it."""

    def __init__(self, inner: io.BytesIO) -> None:
        self.inner, self.read_so_far = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.read_so_far += len(data)
        return len(data)


@pytest.mark.parametrize("layout", ["legacy", "oci"])
def test_on_file_hears_of_each_layer_while_the_export_goes_on(tmp_path: Path, layout: str) -> None:
    """A push compresses a layer as soon as the export has written it: ``on_file`` is told
    of each kept layer, on disk and decompressed, before the stream has been read to its
    end; a layer ``keep`` drops is never told of."""
    inner = legacy_archive() if layout == "legacy" else oci_archive(with_manifest_json=False)[0]
    total = len(inner.getvalue())
    stream = _Counting(inner)
    heard: list[tuple[str, int, bytes]] = []
    saved = read_saved(
        io.BufferedReader(stream, buffer_size=512),
        tmp_path,
        what="x:1",
        keep=lambda d: d == DIFF_IDS[0],
        on_file=lambda d, p: heard.append((d, stream.read_so_far, p.read_bytes())),
    )
    layers = [(d, read, data) for d, read, data in heard if d in DIFF_IDS]
    assert [(d, data) for d, _, data in layers] == [(DIFF_IDS[0], LAYERS[0])]
    assert layers[0][1] < total  # told before the export ended
    assert stream.read_so_far == total and saved.diff_ids == DIFF_IDS
