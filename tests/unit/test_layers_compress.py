"""The venv's layer plan, and layer compression that is the same on every machine."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import pytest
import zstandard

from aibuild.errors import PublishError, RenderError
from aibuild.image.layers import LayerGroup, Pin, check_groups, plan_venv_layers
from aibuild.image.render import render_dockerfile
from aibuild.oci import compress
from aibuild.oci.archive import BlobCache, manifest_bytes
from aibuild.oci.media import LAYER_GZIP, LAYER_OCI_ZSTD, MANIFEST_OCI, MANIFEST_V2
from aibuild.oci.meter import Meter
from aibuild.pipeline import plan_for
from aibuild.profile.plan import RenderOptions

ROOT = Path(__file__).resolve().parents[2]
CPU_WHEELHOUSE = ROOT / ".cache" / "wheelhouse"

# ---------------------------------------------------------------- compression


def _input() -> bytes:
    """10 MB that compress somewhat, the same on every machine."""
    return b"".join(
        hashlib.sha256(str(i).encode()).digest() + b"aibuild layer %d\n" % (i % 97)
        for i in range(200_000)
    )


# Recorded once: the digests the pinned wheels (zlib-ng 1.1.0, zstandard 0.25.0) give for
# _input(). A host's zlib has no say in them; a new wheel release that changes them must be
# a deliberate bump of the pin and of these values.
INPUT_SHA256 = "5ead90c706066eac3cb805957aa93a49b85b47b0170a7040f2e1abfd2679fb63"
RECORDED = {
    "gzip": "sha256:8c7854a2c9aadaa242a30d64aeee054c55384a6f4c08581c6ce39118309ff857",
    "zstd": "sha256:f2c8b13cf87049714da786c450ef0a3a9b66740ef31b0db4012f764112c7af37",
}


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_compressed_digest_matches_the_one_recorded(name: str) -> None:
    data = _input()
    assert hashlib.sha256(data).hexdigest() == INPUT_SHA256
    out = io.BytesIO()
    digest = compress.compress_stream(io.BytesIO(data), out, name, size=len(data), threads=2)
    assert digest == RECORDED[name]
    assert digest == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
    # and it is the real format: the standard decoders give the input back
    if name == "gzip":
        assert gzip.decompress(out.getvalue()) == data
    else:
        assert zstandard.ZstdDecompressor().decompress(out.getvalue()) == data


def test_zstd_output_is_the_same_for_any_thread_count() -> None:
    data = _input()
    digests = {
        compress.compress_stream(io.BytesIO(data), io.BytesIO(), "zstd", size=len(data), threads=t)
        for t in (1, 2, 3, 4, 8, 16)
    }
    assert digests == {RECORDED["zstd"]}
    # 0 threads would be zstd's single-threaded mode, which writes other bytes: never used
    single = zstandard.ZstdCompressor(level=3, threads=0, write_checksum=False).compress(data)
    assert "sha256:" + hashlib.sha256(single).hexdigest() != RECORDED["zstd"]


def test_parallel_layers_give_the_same_digests_as_one_at_a_time(tmp_path: Path) -> None:
    sources = {}
    for i in range(5):
        sources[f"l{i}"] = tmp_path / f"l{i}.tar"
        sources[f"l{i}"].write_bytes(_input()[i * 100_000 : (i + 1) * 900_000])
    for name in compress.COMPRESSIONS:
        alone = {
            k: compress.compress_file(p, tmp_path / f"{k}.{name}.1", name)
            for k, p in sources.items()
        }
        cache = BlobCache(tmp_path / f"cache-{name}", compression=name)
        cache.add_layers(sources, cores=4)
        together = {k: cache.layer(k) for k in sources}
        assert {k: b.digest for k, b in together.items() if b is not None} == alone


def test_workers_share_the_cores() -> None:
    assert compress.workers(10, cores=4) == (4, 1)
    assert compress.workers(1, cores=16) == (1, 16)
    assert compress.workers(3, cores=16) == (3, 5)
    assert compress.workers(0, cores=2) == (1, 2)


def test_unknown_compression_is_one_clear_error() -> None:
    with pytest.raises(PublishError, match="unknown compression 'lz4'"):
        compress.codec("lz4")


def test_blob_cache_keys_by_compression(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_input()[:1_000_000])
    diff_id = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    gz, zst = BlobCache(tmp_path / "c", "gzip"), BlobCache(tmp_path / "c", "zstd")
    gz.add_layers({diff_id: layer})
    assert zst.layer(diff_id) is None  # a gzip entry never answers for zstd
    zst.add_layers({diff_id: layer})
    a, b = gz.layer(diff_id), zst.layer(diff_id)
    assert a is not None and b is not None and a.digest != b.digest
    assert (a.media_type, b.media_type) == (LAYER_GZIP, LAYER_OCI_ZSTD)
    assert gz.index != zst.index and "zlib-ng" in gz.index.name and "zstandard" in zst.index.name
    config = gz.add_config(b"{}")
    assert f'"mediaType":"{MANIFEST_V2}"' in manifest_bytes(config, [a]).decode()
    oci = manifest_bytes(config, [b]).decode()
    assert f'"mediaType":"{MANIFEST_OCI}"' in oci
    assert '"application/vnd.oci.image.config.v1+json"' in oci


def test_meter_reports_bytes_rate_and_eta() -> None:
    now = [0.0]
    lines: list[str] = []
    meter = Meter("upload", 4_000_000_000, lines.append, every=1.0, clock=lambda: now[0])
    now[0] = 10.0
    meter.add(1_000_000_000)
    assert lines == ["progress: upload: 1.0 GB of 4.0 GB (25%), 100.0 MB/s, ETA 30s"]
    now[0] = 10.5
    meter.add(1)  # within `every`: nothing
    assert len(lines) == 1
    meter.finish()
    assert lines[-1].startswith("upload: 1.0 GB in 10.5s")


# ---------------------------------------------------------------- the layer plan


def _wheel(directory: Path, name: str, version: str, requires: list[str], tag: str) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    path = directory / f"{dist}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    module = f"{name.replace('-', '_')}/__init__.py"
    wheel = f"Wheel-Version: 1.0\nGenerator: aibuild-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
    files = [f"{dist}.dist-info/METADATA", f"{dist}.dist-info/WHEEL", module]
    record = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:  # an installable wheel: uv installs it
        archive.writestr(module, f"# {version}\n")
        archive.writestr(files[0], meta)
        archive.writestr(files[1], wheel)
        archive.writestr(f"{dist}.dist-info/RECORD", record)


def _fake_wheelhouse(directory: Path, torch_local: str) -> Path:
    """torch 2.13.0+LOCAL needing two nvidia wheels and triton, plus the runtime's packages."""
    directory.mkdir()
    any_tag = "py3-none-any"
    linux = "cp311-cp311-manylinux_2_28_x86_64"
    torch_requires = [
        "nvidia-cublas==13.0.1; platform_system == 'Linux'",
        "nvidia-nccl==2.28.1; platform_system == 'Linux'",
        "triton==3.6.0; platform_system == 'Linux'",
        "sympy>=1.13",
        "colorama; sys_platform == 'win32'",  # not for the image: never resolved
    ]
    _wheel(directory, "torch", f"2.13.0+{torch_local}", torch_requires, linux)
    _wheel(directory, "nvidia-cublas", "13.0.1", [], "py3-none-manylinux_2_27_x86_64")
    _wheel(directory, "nvidia-nccl", "2.28.1", [], "py3-none-manylinux_2_18_x86_64")
    _wheel(directory, "triton", "3.6.0", [], linux)
    _wheel(directory, "sympy", "1.14.0", ["mpmath>=1.1"], any_tag)
    _wheel(directory, "mpmath", "1.3.0", [], any_tag)
    _wheel(directory, "numpy", "2.4.6", [], linux)
    _wheel(directory, "numpy", "2.4.6", [], "cp312-cp312-manylinux_2_28_x86_64")  # other Python
    for name, version in (("click", "8.5.1"), ("packaging", "26.4"), ("pyyaml", "6.0.4")):
        _wheel(directory, name, version, [], any_tag)
    return directory


def _runs(text: str) -> list[str]:
    """Each RUN instruction of a Dockerfile, with its continuation lines."""
    return [r.split("\n\n")[0] for r in text.split("\nRUN ")[1:]]


def test_phases_at_once_share_one_status_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Export, compression and upload overlap: on a terminal their meters make one line,
    redrawn in place, that a phase leaves with its closing line."""
    from aibuild.cli.options import stderr_log
    from aibuild.oci.meter import PROGRESS

    log = stderr_log(False, live=True)
    log(PROGRESS + "export: 1.0 GB of 5.0 GB (20%)")
    log(PROGRESS + "compress (zstd): 0.5 GB of 1.0 GB (50%)")
    log(PROGRESS + "export: 2.0 GB of 5.0 GB (40%)")
    log("export: 5.0 GB in 20.0s (250.0 MB/s)")
    log(PROGRESS + "upload: 0.1 GB of 0.3 GB (33%)")
    drawn = capsys.readouterr().err.split("\r")  # click drops the erase code off a terminal
    assert drawn[3] == "export: 2.0 GB of 5.0 GB (40%) | compress (zstd): 0.5 GB of 1.0 GB (50%)"
    assert drawn[4] == "export: 5.0 GB in 20.0s (250.0 MB/s)\n"
    assert drawn[5] == "compress (zstd): 0.5 GB of 1.0 GB (50%) | upload: 0.1 GB of 0.3 GB (33%)"
    piped = stderr_log(False, live=False)
    piped(PROGRESS + "export: 1.0 GB")
    piped(PROGRESS + "export: 1.1 GB")  # within 5 s of the last: not printed
    assert capsys.readouterr().err == "export: 1.0 GB\n"


def test_layer_plan_groups_least_changed_first(tmp_path: Path) -> None:
    plan = plan_for("cpu", ("software.python=3.11",))
    wheelhouse = _fake_wheelhouse(tmp_path / "w", "a")
    groups = plan_venv_layers(plan, RenderOptions(wheelhouse=str(wheelhouse)))
    assert groups is not None
    assert [(g.key, [p.requirement for p in g.pins]) for g in groups] == [
        ("nvidia", ["nvidia-cublas==13.0.1", "nvidia-nccl==2.28.1"]),
        ("triton", ["triton==3.6.0"]),
        ("torch", ["torch==2.13.0+a"]),
        ("torch-deps", ["mpmath==1.3.0", "sympy==1.14.0"]),
        ("runtime", ["click==8.5.1", "packaging==26.4", "pyyaml==6.0.4"]),
        ("profile", ["numpy==2.4.6"]),
    ]


def test_a_torch_only_pin_change_leaves_the_other_layers_alone(tmp_path: Path) -> None:
    """Each layer's RUN depends only on its own pins: with torch alone changed, every other
    venv step renders byte for byte the same (the same cache key, the same files, so the
    same reproducible layer digest: tests/integration/test_layers.py checks the digests)."""
    plan = plan_for("cpu", ("software.python=3.11",))
    texts = []
    for local in ("a", "b"):
        wheelhouse = _fake_wheelhouse(tmp_path / local, local)
        options = RenderOptions(wheelhouse=str(wheelhouse), wheelhouse_url="http://127.0.0.1:1/")
        texts.append(render_dockerfile(plan, options))
    a, b = (_runs(t) for t in texts)
    changed = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert len(changed) == 1 and "torch==2.13.0+a" in a[changed[0]]
    assert "--no-deps" in a[changed[0]]


def test_a_requirements_change_leaves_the_earlier_layers_alone(tmp_path: Path) -> None:
    """A project requirement that needs a runtime package (wheel needs packaging) adds a
    project layer and leaves the runtime's and the profile's layers as they were: a package
    belongs to the first layer, in the layers' order, whose requirements need it."""
    wheelhouse = _fake_wheelhouse(tmp_path / "w", "a")
    _wheel(wheelhouse, "wheel", "0.48.0", ["packaging>=24"], "py3-none-any")
    plans = {}
    for name, requirements in (("before", "numpy>=1.26\n"), ("after", "numpy>=1.26\nwheel\n")):
        project = tmp_path / name
        project.mkdir()
        (project / "requirements.txt").write_text(requirements)
        (project / "aibuild.yaml").write_text(
            "name: p\nextends: cpu\nproject:\n  path: .\n  requirements: requirements.txt\n"
        )
        plan = plan_for(str(project / "aibuild.yaml"), ("software.python=3.11",))
        groups = plan_venv_layers(plan, RenderOptions(wheelhouse=str(wheelhouse)))
        assert groups is not None
        plans[name] = {g.key: [p.requirement for p in g.pins] for g in groups}
    before, after = plans["before"], plans["after"]
    assert after.pop("project") == ["wheel==0.48.0"]
    assert after == before
    assert before["runtime"] == ["click==8.5.1", "packaging==26.4", "pyyaml==6.0.4"]
    assert before["profile"] == ["numpy==2.4.6"]


def test_real_cpu_wheelhouse_plan_and_hadolint(tmp_path: Path) -> None:
    if not (CPU_WHEELHOUSE / ".complete").is_file():
        pytest.skip("no cpu wheelhouse (make wheelhouse)")
    plan = plan_for("cpu", ("software.python=3.11", "software.torch=2.13.0"))
    options = RenderOptions(wheelhouse=str(CPU_WHEELHOUSE), wheelhouse_url="http://127.0.0.1:1/")
    groups = plan_venv_layers(plan, options)
    assert groups is not None
    keys = [g.key for g in groups]
    assert keys[0] == "torch" and keys[-1] == "profile"
    names = [p.name for g in groups for p in g.pins]
    assert len(names) == len(set(names)) and "uv" not in names and "pip" not in names
    text = render_dockerfile(plan, options)
    assert text.count("uv pip install") == len(groups)
    assert "COPY requirements.txt" not in text
    from tests.unit.conftest import hadolint

    result = hadolint(text)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_a_plan_that_installs_a_package_twice_is_refused() -> None:
    torch = Pin("torch", "2.13.0")
    groups = [
        LayerGroup("torch", "torch", (torch,), True),
        LayerGroup("profile", "p", (Pin("numpy", "2.4.6"), Pin("Torch", "2.12.0")), False),
    ]
    with pytest.raises(RenderError, match="would install torch twice"):
        check_groups(groups)


def test_a_lock_alone_splits_by_name() -> None:
    plan = plan_for("cpu", ("software.python=3.11",))
    pins = ("nvidia-cublas==13.0.1", "torch==2.13.0", "numpy==2.4.6", "pip==26.3")
    groups = plan_venv_layers(plan, RenderOptions(constraints=pins))
    assert groups is not None
    assert [g.key for g in groups] == ["nvidia", "torch", "profile"]


def test_without_exact_pins_the_image_keeps_two_installs() -> None:
    plan = plan_for("cpu", ("software.python=3.11",))
    assert plan_venv_layers(plan, RenderOptions()) is None
