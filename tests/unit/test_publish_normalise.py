"""The normaliser's pure parts: layer tars, configs, gzip, diff, SBOM, without Docker."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from aibuild.labels import REPRODUCIBLE
from aibuild.oci.archive import gzip_deterministic
from aibuild.oci.media import rfc3339
from aibuild.publish.diff import FileEntry, compare_files, flatten
from aibuild.publish.normalise import (
    Signature,
    apply_layer,
    drop_reason,
    is_timestamp_pyc,
    normalise_config,
    normalise_layer,
)
from aibuild.publish.sbom import cyclonedx, sbom_bytes, split_pins

EPOCH = 1_700_000_000
PYC_TIMESTAMP = b"\xa7\r\r\n" + b"\0\0\0\0" + b"\x01" * 8 + b"code"
PYC_HASH = b"\xa7\r\r\n" + b"\x01\0\0\0" + b"\x02" * 8 + b"code"


def _layer(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = fields.pop("mtime", EPOCH + 1000)  # type: ignore[assignment]
    info.uname, info.gname = "builder", "builders"
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _entries(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_layer_sorted_clamped_names_blanked_metadata_kept(tmp_path: Path) -> None:
    xattr = {"SCHILY.xattr.security.capability": "\x01\x00", "atime": "1.5", "ctime": "2.5"}
    src = _layer(
        tmp_path / "src.tar",
        [
            (_info("usr/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("usr/b", mode=0o4755, uid=1000, gid=1000, pax_headers=xattr), b"bbb"),
            (_info("usr/a", mtime=100), b"aaa"),  # older than the epoch: kept as is
            (_info("usr/.wh.gone", mode=0o644), b""),
            (_info("usr/link", tarfile.SYMTYPE, linkname="a"), None),
        ],
    )
    report = normalise_layer(src, tmp_path / "out.tar", EPOCH)
    out = _entries(tmp_path / "out.tar")
    assert [m.name for m in out] == ["usr", "usr/.wh.gone", "usr/a", "usr/b", "usr/link"]
    by_name = {m.name: m for m in out}
    assert by_name["usr/a"].mtime == 100
    assert by_name["usr/b"].mtime == EPOCH
    assert by_name["usr/b"].mode == 0o4755
    assert (by_name["usr/b"].uid, by_name["usr/b"].gid) == (1000, 1000)
    assert by_name["usr/b"].pax_headers == {"SCHILY.xattr.security.capability": "\x01\x00"}
    assert all(m.uname == "" and m.gname == "" for m in out)
    assert by_name["usr/link"].linkname == "a"
    assert report.entries == 5 and report.clamped == 4 and report.dropped == []
    # The same input always gives the same bytes; a second pass changes nothing.
    again = normalise_layer(src, tmp_path / "again.tar", EPOCH)
    assert again.diff_id == report.diff_id
    twice = normalise_layer(tmp_path / "out.tar", tmp_path / "twice.tar", EPOCH)
    assert twice.diff_id == report.diff_id


def test_hardlinks_the_smallest_name_is_the_file_the_others_link_to_it(tmp_path: Path) -> None:
    """Docker 20.10 makes the first name found the file (z/target here), the containerd
    store may pick another (a/link): normalised, both give one layer."""
    classic = _layer(
        tmp_path / "classic.tar",
        [
            (_info("z/target", mode=0o755), b"data"),
            (_info("a/link", tarfile.LNKTYPE, linkname="z/target", mode=0o755), None),
            (_info("m/other", tarfile.LNKTYPE, linkname="z/target", mode=0o755), None),
        ],
    )
    containerd = _layer(
        tmp_path / "containerd.tar",
        [
            (_info("m/other", mode=0o755), b"data"),
            (_info("a/link", tarfile.LNKTYPE, linkname="m/other", mode=0o755), None),
            (_info("z/target", tarfile.LNKTYPE, linkname="m/other", mode=0o755), None),
        ],
    )
    a = normalise_layer(classic, tmp_path / "a.tar", EPOCH)
    b = normalise_layer(containerd, tmp_path / "b.tar", EPOCH)
    assert a.diff_id == b.diff_id
    out = _entries(tmp_path / "a.tar")
    assert [(m.name, m.islnk(), m.linkname) for m in out] == [
        ("a/link", False, ""),
        ("m/other", True, "a/link"),
        ("z/target", True, "a/link"),
    ]
    with tarfile.open(tmp_path / "a.tar") as tar:
        handle = tar.extractfile("z/target")
        assert handle is not None and handle.read() == b"data"


def test_content_rules_drop_caches_logs_and_timestamp_pyc(tmp_path: Path) -> None:
    src = _layer(
        tmp_path / "src.tar",
        [
            (_info("var/cache/ldconfig/aux-cache"), b"x"),
            (_info("var/cache/apt/pkgcache.bin"), b"x"),
            (_info("var/log/apt/history.log"), b"x"),
            (_info("var/log/dpkg.log"), b"x"),
            (_info("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"), b"x"),
            (_info("var/lib/apt/lists/lock"), b""),
            (_info("m/__pycache__/t.cpython-311.pyc"), PYC_TIMESTAMP),
            (_info("m/__pycache__/h.cpython-311.pyc"), PYC_HASH),
            (
                _info(
                    "m/__pycache__/link.pyc",
                    tarfile.LNKTYPE,
                    linkname="m/__pycache__/t.cpython-311.pyc",
                ),
                None,
            ),
            (_info("etc/keep.conf"), b"x"),
        ],
    )
    report = normalise_layer(src, tmp_path / "out.tar", EPOCH)
    kept = {m.name for m in _entries(tmp_path / "out.tar")}
    assert kept == {"var/lib/apt/lists/lock", "m/__pycache__/h.cpython-311.pyc", "etc/keep.conf"}
    assert len(report.dropped) == 7


def test_drop_reason_and_pyc_header() -> None:
    assert drop_reason("var/cache/ldconfig/aux-cache")
    assert drop_reason("usr/lib/python3/x.py") is None
    assert is_timestamp_pyc("a.pyc", PYC_TIMESTAMP)
    assert not is_timestamp_pyc("a.pyc", PYC_HASH)
    assert not is_timestamp_pyc("a.txt", PYC_TIMESTAMP)


def test_config_times_container_fields_labels_canonical() -> None:
    raw = json.dumps(
        {
            "architecture": "amd64",
            "created": "2026-11-28T13:00:00.123Z",
            "container": "abc",
            "container_config": {"Cmd": ["sh"]},
            "docker_version": "20.10.24",
            "config": {"Image": "sha256:parent", "Hostname": "abc", "Labels": {"a": "1"}},
            "history": [{"created": "2026-11-28T13:00:00Z", "created_by": "RUN x"}],
            "rootfs": {"type": "layers", "diff_ids": ["sha256:old"]},
        }
    ).encode()
    out = normalise_config(raw, ["sha256:new"], EPOCH, {"org.opencontainers.image.revision": "c"})
    config = json.loads(out)
    assert config["created"] == rfc3339(EPOCH) == "2023-11-14T22:13:20Z"
    assert config["history"] == [{"created": rfc3339(EPOCH), "created_by": "RUN x"}]
    for key in ("container", "container_config", "docker_version"):
        assert key not in config
    assert "Image" not in config["config"] and "Hostname" not in config["config"]
    assert config["config"]["Labels"] == {
        "a": "1",
        "org.opencontainers.image.revision": "c",
        REPRODUCIBLE: str(EPOCH),
    }
    assert config["rootfs"]["diff_ids"] == ["sha256:new"]
    assert out == json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def test_gzip_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "layer.tar"
    src.write_bytes(b"some layer bytes " * 1000)
    first = gzip_deterministic(src, tmp_path / "a.gz")
    second = gzip_deterministic(src, tmp_path / "b.gz")
    assert first == second
    data = (tmp_path / "a.gz").read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # mtime 0
    assert data[3] & 0x08 == 0  # no file name
    assert gzip.decompress(data) == src.read_bytes()


def test_diff_compare_files_and_flatten() -> None:
    def entry(path: str, sha: str, mtime: int = 0) -> FileEntry:
        return FileEntry(path, "file", 1, "0o644", "0:0", mtime, "", sha, "")

    a = {"x": entry("x", "1"), "y": entry("y", "2", 5), "only-a": entry("only-a", "3")}
    b = {"x": entry("x", "1"), "y": entry("y", "9", 6), "only-b": entry("only-b", "4")}
    changes = compare_files(a, b)
    assert [c.what for c in changes] == ["only-a", "only-b", "y"]
    assert changes[0].a == "present" and changes[0].b == "absent"
    assert changes[2].a == {"mtime": 5, "sha256": "2"}
    assert dict(flatten({"a": {"b": [1, {"c": 2}]}, "d": {}})) == {
        "a.b[0]": 1,
        "a.b[1].c": 2,
        "d": {},
    }


def test_sbom_cyclonedx_document() -> None:
    doc = cyclonedx(
        ["torch==2.13.0+cpu", "Jinja2==3.1.6", "aibuild @ file:///x"],
        ["bash=5.2.15-2+b2", "libc6=2.36-9+deb12u10"],
        image_name="aibuild",
        image_version="cpu-torch2.13.0-cpu",
        os_name="debian12",
        source_date_epoch=EPOCH,
        hashes={"torch": ["ab" * 32]},
    )
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert doc["metadata"]["timestamp"] == rfc3339(EPOCH)
    purls = [c["purl"] for c in doc["components"]]
    assert purls == [
        "pkg:pypi/jinja2@3.1.6",
        "pkg:pypi/torch@2.13.0+cpu",
        "pkg:deb/debian/bash@5.2.15-2+b2?distro=debian-12",
        "pkg:deb/debian/libc6@2.36-9+deb12u10?distro=debian-12",
    ]
    torch = doc["components"][1]
    assert torch["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert doc["serialNumber"].startswith("urn:uuid:")
    same = cyclonedx(
        ["Jinja2==3.1.6", "torch==2.13.0+cpu"],
        ["libc6=2.36-9+deb12u10", "bash=5.2.15-2+b2"],
        image_name="aibuild",
        image_version="cpu-torch2.13.0-cpu",
        os_name="debian12",
        source_date_epoch=EPOCH,
        hashes={"torch": ["ab" * 32]},
    )
    assert sbom_bytes(doc) == sbom_bytes(same)
    assert split_pins(["a==1", "b @ x", "c==2"], "==") == [("a", "1"), ("c", "2")]


def test_classic_and_containerd_store_layers_normalise_to_one_diff_id(tmp_path: Path) -> None:
    """What the two image stores' diffs of one build step differ in (seen on Docker 20.10,
    26 classic and 26 containerd): the classic diff carries a file the step only touched
    (useradd's /etc/.pwd.lock, with S_IFREG in its mode field) and writes whiteouts 0600;
    the containerd diff leaves the touched file out and writes whiteouts 0000."""
    base = _layer(
        tmp_path / "base.tar",
        [
            (_info("./etc/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("./etc/.pwd.lock", mode=0o600, mtime=100), b""),
            (_info("./etc/issue.net", mode=0o644, mtime=100), b"Debian\n"),
            (_info("./etc/passwd", mode=0o644, mtime=100), b"root:x:0:0\n"),
        ],
    )
    changed = [
        (_info("etc/", tarfile.DIRTYPE, mode=0o755), None),
        (_info("etc/passwd", mode=0o644), b"root:x:0:0\naibuild:x:1000:1000\n"),
    ]
    classic = _layer(
        tmp_path / "classic.tar",
        [
            *changed,
            (_info("etc/.pwd.lock", mode=0o100600), b""),  # touched, not changed
            (_info("etc/.wh.issue.net", mode=0o600), b""),
        ],
    )
    containerd = _layer(
        tmp_path / "containerd.tar",
        [(_info("etc/.wh.issue.net", mode=0), b""), *reversed(changed)],
    )
    below: dict[str, Signature] = {}
    apply_layer(below, base)
    assert "etc/.pwd.lock" in below and "etc/issue.net" in below
    a = normalise_layer(classic, tmp_path / "a.tar", EPOCH, below)
    b = normalise_layer(containerd, tmp_path / "b.tar", EPOCH, below)
    assert a.diff_id == b.diff_id
    assert a.dropped == ["etc/.pwd.lock"] and b.dropped == []
    whiteout = {m.name: m for m in _entries(tmp_path / "a.tar")}["etc/.wh.issue.net"]
    assert whiteout.mode == 0
    # Without the layers below, the touched file stays: nothing is dropped blindly.
    assert normalise_layer(classic, tmp_path / "c.tar", EPOCH).dropped == []
    # A whiteout removes what it names from what the next layer sees.
    apply_layer(below, tmp_path / "a.tar")
    assert "etc/issue.net" not in below
    assert below["etc/passwd"][5] != apply_signature_of(base, "./etc/passwd")


def apply_signature_of(layer: Path, name: str) -> str:
    files: dict[str, Signature] = {}
    apply_layer(files, layer)
    return files[name.removeprefix("./")][5]


def test_empty_config_fields_are_dropped_like_the_containerd_store_does() -> None:
    classic = {
        "config": {"Tty": False, "Cmd": None, "Domainname": "", "User": "1000", "StopSignal": 0},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    containerd = {"config": {"User": "1000", "StopSignal": 0}, "rootfs": classic["rootfs"]}
    a = normalise_config(json.dumps(classic).encode(), [], EPOCH)
    b = normalise_config(json.dumps(containerd).encode(), [], EPOCH)
    assert a == b
    assert json.loads(a)["config"]["StopSignal"] == 0  # zero is a value, not an absence


def test_opaque_whiteout_on_a_new_directory_and_a_touched_directory_are_left_out(
    tmp_path: Path,
) -> None:
    """Docker 20.10 marks a directory new in the layer opaque and carries a directory a
    step only touched (/tmp); the containerd store writes neither."""
    base = _layer(
        tmp_path / "base.tar",
        [
            (_info("tmp/", tarfile.DIRTYPE, mode=0o1777, mtime=100), None),
            (_info("etc/", tarfile.DIRTYPE, mode=0o755, mtime=100), None),
            (_info("etc/old/a", mode=0o644, mtime=100), b"a"),
        ],
    )
    below: dict[str, Signature] = {}
    apply_layer(below, base)
    classic = _layer(
        tmp_path / "classic.tar",
        [
            (_info("tmp/", tarfile.DIRTYPE, mode=0o1777), None),
            (_info("etc/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("etc/new/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("etc/new/.wh..wh..opq", mode=0), b""),
            (_info("etc/new/x", mode=0o644), b"x"),
            (_info("etc/old/.wh..wh..opq", mode=0), b""),  # hides a: kept
        ],
    )
    containerd = _layer(
        tmp_path / "containerd.tar",
        [
            (_info("etc/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("etc/new/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("etc/new/x", mode=0o644), b"x"),
            (_info("etc/old/.wh..wh..opq", mode=0), b""),
        ],
    )
    a = normalise_layer(classic, tmp_path / "a.tar", EPOCH, below)
    b = normalise_layer(containerd, tmp_path / "b.tar", EPOCH, below)
    assert a.diff_id == b.diff_id
    names = [m.name for m in _entries(tmp_path / "a.tar")]
    assert "etc/new/.wh..wh..opq" not in names and "tmp" not in names
    # the opaque whiteout that hides a, as the explicit whiteout the containerd store writes
    assert "etc/old/.wh.a" in names and "etc" in names  # etc holds changes


def test_a_directory_written_again_gives_one_layer_on_both_stores(tmp_path: Path) -> None:
    """uv replacing a package: the classic store's diff marks the directory opaque and
    lists its new entries; the containerd store whiteouts each path that is gone (a removed
    subtree once, at its top). A directory only touched, and one nested in it (the build
    scratch's parent /tmp), is in the classic diff only. Both normalise to one layer."""
    base = _layer(
        tmp_path / "base.tar",
        [
            (_info("tmp/", tarfile.DIRTYPE, mode=0o1777, mtime=100), None),
            (_info("tmp/build/", tarfile.DIRTYPE, mode=0o755, mtime=100), None),
            (_info("pkg/", tarfile.DIRTYPE, mode=0o755, mtime=100), None),
            (_info("pkg/keep.py", mode=0o644, mtime=100), b"same"),
            (_info("pkg/old.py", mode=0o644, mtime=100), b"old"),
            (_info("pkg/gone/", tarfile.DIRTYPE, mode=0o755, mtime=100), None),
            (_info("pkg/gone/a.py", mode=0o644, mtime=100), b"a"),
        ],
    )
    below: dict[str, Signature] = {}
    apply_layer(below, base)
    classic = _layer(
        tmp_path / "classic.tar",
        [
            (_info("tmp/", tarfile.DIRTYPE, mode=0o1777), None),
            (_info("tmp/build/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("pkg/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("pkg/.wh..wh..opq", mode=0), b""),
            (_info("pkg/keep.py", mode=0o644), b"same"),
            (_info("pkg/new.py", mode=0o644), b"new"),
        ],
    )
    containerd = _layer(
        tmp_path / "containerd.tar",
        [
            (_info("pkg/", tarfile.DIRTYPE, mode=0o755), None),
            (_info("pkg/.wh.gone", mode=0), b""),
            (_info("pkg/.wh.old.py", mode=0), b""),
            (_info("pkg/keep.py", mode=0o644), b"same"),
            (_info("pkg/new.py", mode=0o644), b"new"),
        ],
    )
    a = normalise_layer(classic, tmp_path / "a.tar", EPOCH, below)
    b = normalise_layer(containerd, tmp_path / "b.tar", EPOCH, below)
    names = [m.name for m in _entries(tmp_path / "a.tar")]
    assert names == ["pkg", "pkg/.wh.gone", "pkg/.wh.old.py", "pkg/new.py"]
    assert a.diff_id == b.diff_id
