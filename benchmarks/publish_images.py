"""Build the images that bench_publish.py compares, then run it on them.

Every image is built with ``aibuild image --reproducible`` at one SOURCE_DATE_EPOCH on the
bootstrapped Debian base (the test environment's), so a layer's digest depends only on its
content; one engine's build cache is used between them, which --reproducible makes
irrelevant to the digests (tests/integration/test_layer_digests.py builds with --no-cache
to show it).

    cpu            the cpu profile (torch 2.13.0+cpu, the cpu wheelhouse)
    cuda           a project on gpu-h200 (torch 2.13.0 cu130 and its nvidia-* wheels from
                   the CUDA wheelhouse; the project: train.py, requirements.txt with numpy)
    code edit      the same project with a line added to train.py
    requirements   the same project with a requirement added to requirements.txt
                   (``wheel``, a wheel already in the cpu wheelhouse)
    torch release  the same project with torch 2.13.1 whose nvidia pins are 2.13.0's: a
                   stand-in, the real 2.13.0 wheel relabelled (its dist-info, METADATA and
                   torch/version.py say 2.13.1; the same binaries). PyPI's real pair with
                   equal nvidia pins, 2.14.0 and 2.14.1, does not install here (both need
                   nvidia-nccl-cu13 2.30.7, which this machine's index lacks).

    CUDA change    the same project one release earlier, torch 2.12.1, whose CUDA pins
                   are older (cuda-toolkit 13.0.2 against 2.13.0's 13.0.3): the nearest
                   real pair with another CUDA that installs here (PyPI has one CUDA build
                   per torch release, download.pytorch.org is out of reach). Its
                   wheelhouse: `aibuild wheelhouse gpu-h200 --set software.torch=2.12.1
                   --set software.python=3.11 --set software.os=debian12 -o DIR`
                   (--cuda-change-wheelhouse; the row is left out, saying so, without it).

    python benchmarks/publish_images.py [--work DIR] [--keep] [--only-build]
        [--pull-host unix:///var/lib/docker-modern-containerd/docker.sock]

Defaults come from .aibuild-test-env (base image, wheelhouses) and ``make test-heavy``'s
CUDA wheelhouse (.cache/wheelhouse-cu130). Builds take minutes each; the images are
removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_cache import env_file_defaults  # noqa: E402

EPOCH = "1764892800"  # 2025-12-05: any fixed time; the same for every image
PROJECT_PROFILE = """\
name: benchproject
extends: gpu-h200
project:
  path: .
  requirements: requirements.txt
  command: python train.py --epochs 1
"""


def _record_hash(data: bytes) -> str:
    digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def relabel_torch(wheel: Path, version: str, out_dir: Path) -> Path:
    """A copy of torch's ``wheel`` that says it is ``version``: the dist-info folder, its
    METADATA and torch/version.py are rewritten and RECORD follows; every other file keeps
    its bytes."""
    old = wheel.name.split("-")[1]
    target = out_dir / wheel.name.replace(f"torch-{old}-", f"torch-{version}-")
    old_info, new_info = f"torch-{old}.dist-info/", f"torch-{version}.dist-info/"
    with (
        zipfile.ZipFile(wheel) as src,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        records: list[str] = []
        for info in src.infolist():
            name = info.filename.replace(old_info, new_info, 1)
            if name == f"{new_info}RECORD":
                continue
            data = src.read(info)
            if name in (f"{new_info}METADATA", "torch/version.py"):
                data = data.replace(old.encode(), version.encode())
            dst.writestr(zipfile.ZipInfo(name, date_time=info.date_time), data)
            records.append(f"{name},{_record_hash(data)},{len(data)}")
        records.append(f"{new_info}RECORD,,")
        dst.writestr(f"{new_info}RECORD", "\n".join(records) + "\n")
    return target


def _aibuild_image(profile: str, tag: str, base: str, wheelhouse: Path, cwd: Path,
                   *sets: str) -> tuple[str, str, float]:  # fmt: skip
    """Build ``profile`` with --reproducible: (image id, the pre-normalise image's id,
    seconds)."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    env.setdefault("AIBUILD_BUILD_NETWORK", env.get("AIBUILD_TEST_BUILD_NETWORK", "host"))
    args = ["image", profile, "--base-image", base, "--wheelhouse", str(wheelhouse), "--set",
            "software.python=3.11", *sets, "-t", tag, "--reproducible", "--json"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "aibuild", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"publish_images: building {tag} failed (exit {done.returncode})")
    result = json.loads(done.stdout)
    return str(result["final_image_id"]), str(result["image_id"]), time.monotonic() - started


def _wheelhouse(work: Path, cuda: Path, cpu: Path) -> tuple[Path, Path]:
    """(the CUDA wheelhouse plus the requirement the requirements change adds, the same
    with torch 2.13.1 in place of 2.13.0), hard links where the files allow."""
    house, torch_house = work / "wheelhouse", work / "wheelhouse-torch"
    for folder in (house, torch_house):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    wheels = [*cuda.glob("*.whl"), *cpu.glob("wheel-*.whl")]
    for wheel in wheels:
        for folder in (house, torch_house):
            if folder is torch_house and wheel.name.startswith("torch-"):
                continue
            try:
                os.link(wheel, folder / wheel.name)
            except OSError:
                shutil.copy2(wheel, folder / wheel.name)
    (torch_wheel,) = cuda.glob("torch-2.13.0-*.whl")
    relabel_torch(torch_wheel, "2.13.1", torch_house)
    return house, torch_house


def _project(work: Path, name: str, edit: str = "", requirement: str = "") -> Path:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "aibuild.yaml").write_text(PROJECT_PROFILE)
    train = (ROOT / "examples" / "mnist" / "train.py").read_text()
    (folder / "train.py").write_text(train + edit)
    (folder / "requirements.txt").write_text("numpy>=1.26\n" + requirement)
    return folder / "aibuild.yaml"


def build_images(
    work: Path, base: str, cpu_house: Path, cuda_house: Path, older_house: Path | None
) -> dict[str, str]:
    """Every image, by name: tag. Prints each build's time."""
    house, torch_house = _wheelhouse(work, cuda_house, cpu_house)
    builds = [
        ("cpu", "cpu", cpu_house, ()),
        ("cuda", str(_project(work, "project")), house, ()),
        ("code edit", str(_project(work, "edit", edit="print('edited')\n")), house, ()),
        ("requirements", str(_project(work, "req", requirement="wheel\n")), house, ()),
        ("torch release", str(_project(work, "torch")), torch_house,
         ("--set", "software.torch=2.13.1")),
    ]  # fmt: skip
    if older_house is not None:
        builds.append(("CUDA change", str(_project(work, "older")), older_house,
                       ("--set", "software.torch=2.12.1")))  # fmt: skip
    tags, unnormalised = {}, []
    for name, profile, wheels, sets in builds:
        if name == "CUDA change":  # last, after the others' build cache is gone: disk
            _remove(unnormalised)
        tag = f"aibuild-bench/publish:{name.replace(' ', '-')}"
        image_id, raw_id, seconds = _aibuild_image(profile, tag, base, wheels, work, *sets)
        print(f"  built {name:<14} {tag}  {image_id[:19]}  {seconds:.0f} s", flush=True)
        tags[name] = tag
        if raw_id != image_id:
            unnormalised.append(raw_id)
    _remove(unnormalised)
    return tags


def _remove(images: list[str]) -> None:
    """Remove these images (with their untagged parents, the build cache) and forget them."""
    if images:
        subprocess.run(["docker", "image", "rm", *images], capture_output=True)
    images.clear()


def main(argv: list[str] | None = None) -> int:
    defaults = env_file_defaults()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/aibuild-bench-publish"))
    parser.add_argument("--base-image", default=defaults.get("AIBUILD_TEST_BASE_IMAGE"))
    parser.add_argument("--wheelhouse", type=Path, default=defaults.get("AIBUILD_TEST_WHEELHOUSE"))
    parser.add_argument("--cuda-wheelhouse", type=Path,
                        default=ROOT / ".cache" / "wheelhouse-cu130")  # fmt: skip
    parser.add_argument(
        "--pull-host", default=defaults.get("AIBUILD_TEST_CONTAINERD26_DOCKER_HOST")
    )
    parser.add_argument("--cuda-change-wheelhouse", type=Path,
                        default=ROOT / ".cache" / "wheelhouse-cu130-torch2.12.1")  # fmt: skip
    parser.add_argument("--only-build", action="store_true", help="build, print, keep")
    parser.add_argument("--keep", action="store_true", help="keep the images")
    args = parser.parse_args(argv)
    if not args.base_image or not args.wheelhouse:
        raise SystemExit("publish_images: no base image or wheelhouse: run scripts/test-env.sh")
    if not list(args.cuda_wheelhouse.glob("torch-2.13.0-*.whl")):
        raise SystemExit(f"publish_images: no CUDA torch wheel in {args.cuda_wheelhouse}: run "
                         "scripts/make-cuda-wheelhouse.sh")  # fmt: skip
    older: Path | None = args.cuda_change_wheelhouse
    if not list(older.glob("torch-2.12.1-*.whl")):
        print(f"publish_images: no torch 2.12.1 wheel in {older}: no CUDA change row", flush=True)
        older = None
    args.work.mkdir(parents=True, exist_ok=True)
    tags = build_images(args.work, args.base_image, args.wheelhouse, args.cuda_wheelhouse, older)
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_publish.py"),
             "--image", f"cpu={tags['cpu']}", "--image", f"cuda={tags['cuda']}"]  # fmt: skip
    if args.pull_host:
        bench += ["--pull-host", args.pull_host]
    for change in ("code edit", "requirements", "torch release"):
        what = {"requirements": "requirements change"}.get(change, change)
        bench += ["--change", what, tags["cuda"], tags[change]]
    if "CUDA change" in tags:  # from the older release to the image measured above
        bench += ["--change", "CUDA change", tags["CUDA change"], tags["cuda"]]
    print("  " + " ".join(f"'{a}'" if " " in a else a for a in bench), flush=True)
    if args.only_build:
        return 0
    try:
        return subprocess.run(bench, check=False).returncode
    finally:
        if not args.keep:
            _remove(list(tags.values()))


if __name__ == "__main__":
    raise SystemExit(main())
