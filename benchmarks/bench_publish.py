"""Publishing and pulling images, side by side: `docker push` against `aibuild push` (gzip
and zstd, cold and warm blob cache), the pull of each into a Docker 26 engine with the
containerd store, and the bytes a node must fetch between two images (after a code edit, a
requirements change, a torch-only pin change, a CUDA change).

    python benchmarks/bench_publish.py --image cpu=IMAGE --image cuda=IMAGE \\
        --pull-host unix:///var/lib/docker-modern-containerd/docker.sock \\
        [--change "torch release" IMAGE_A IMAGE_B]...

Every push goes to a throwaway registry of its own (Debian's docker-registry, started by
scripts/registry.sh on a free port with an empty storage directory, stopped and deleted
after its figure), so neither `docker push` nor `aibuild push` finds a blob there: each
push figure is cold on the registry side. "Cold" and "warm" for `aibuild push` name its
own blob cache (compressed layers kept from an earlier push); the warm push still uploads
every blob, to a fresh registry. Each pull is from the registry its push filled, into the
pull engine, and what it pulls is removed from that engine right after.

Each figure is one run: on a shared machine the times are noisy, so read the ratios, taken
side by side in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_SH = ROOT / "scripts" / "registry.sh"
STATE = Path(os.environ.get("AIBUILD_TEST_STATE", "/var/lib/aibuild-test"))


def _aibuild(*args: str, env: dict[str, str], src: Path | None = None) -> float:
    """Seconds ``aibuild ARGS`` took: this checkout's, or the one at ``src`` (another
    commit's worktree, run side by side as the baseline)."""
    if src is not None:
        env = dict(env, PYTHONPATH=str(src))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "aibuild", *args], check=True, env=env, cwd=src,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.monotonic() - started


def _docker(*args: str, host: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if host:
        env["DOCKER_HOST"] = host
    return subprocess.run(["docker", *args], check=True, env=env, capture_output=True, text=True)


def _timed_docker(*args: str, host: str | None = None) -> float:
    started = time.monotonic()
    _docker(*args, host=host)
    return time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def throwaway_registry() -> Iterator[str]:
    """An empty registry on a free port (scripts/registry.sh's ad hoc kind): yields its
    address; stopped and its storage deleted on exit."""
    name = f"bench-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, AIBUILD_REGISTRY_PORT=str(_free_port()))
    subprocess.run(["bash", str(REGISTRY_SH), "start", name], check=True, env=env,
                   capture_output=True)  # fmt: skip
    try:
        addr = subprocess.run(["bash", str(REGISTRY_SH), "addr", name], check=True, env=env,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        yield addr
    finally:
        subprocess.run(["bash", str(REGISTRY_SH), "stop", name], env=env, capture_output=True)
        shutil.rmtree(STATE / "registry" / name, ignore_errors=True)


def _pull(ref: str, host: str) -> float:
    """Pull ``ref`` into the engine at ``host`` and remove it again: the seconds it took."""
    try:
        return _timed_docker("pull", "-q", ref, host=host)
    finally:
        subprocess.run(["docker", "image", "rm", "-f", ref], env=dict(os.environ, DOCKER_HOST=host),
                       capture_output=True)  # fmt: skip


def _manifest_layers(registry: str, repository: str, tag: str) -> list[tuple[str, int]]:
    req = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        data = json.loads(resp.read())
    return [(layer["digest"], int(layer["size"])) for layer in data["layers"]]


def _sent(registry: str, repository: str) -> float:
    return sum(s for _, s in _manifest_layers(registry, repository, "bench"))


def measure_image(
    image: str, pull_host: str | None, env: dict[str, str], baseline: Path | None = None
) -> dict[str, float]:
    """Every push and pull figure of one image (seconds and bytes), each push to an empty
    registry of its own; with ``baseline``, that checkout's cold pushes too, each right
    before this one's."""
    got: dict[str, float] = {}
    size = _docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip()
    got["size"] = float(size)
    with throwaway_registry() as registry:
        ref = f"{registry}/bench/engine:bench"
        _docker("tag", image, ref)
        try:
            got["docker push"] = _timed_docker("push", "-q", ref)
        finally:
            _docker("image", "rm", ref)
        got["docker push bytes"] = _sent(registry, "bench/engine")
        if pull_host:
            got["pull docker push"] = _pull(ref, pull_host)
    for codec in ("gzip", "zstd"):
        if baseline is not None:
            with (
                tempfile.TemporaryDirectory(prefix="aibuild-bench-cache-") as cache,
                throwaway_registry() as registry,
            ):
                got[f"{codec} cold baseline"] = _aibuild(
                    "push", image, "--to", f"{registry}/bench/{codec}:bench", "--method",
                    "direct", "--compression", codec, env=dict(env, AIBUILD_CACHE_DIR=cache),
                    src=baseline,
                )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="aibuild-bench-cache-") as cache:
            env = dict(env, AIBUILD_CACHE_DIR=cache)
            for warmth in ("cold", "warm"):
                with throwaway_registry() as registry:
                    ref = f"{registry}/bench/{codec}:bench"
                    got[f"{codec} {warmth}"] = _aibuild(
                        "push", image, "--to", ref, "--method", "direct",
                        "--compression", codec, env=env,
                    )  # fmt: skip
                    got[f"{codec} bytes"] = _sent(registry, f"bench/{codec}")
                    if pull_host and warmth == "cold":
                        got[f"pull {codec}"] = _pull(ref, pull_host)
    return got


def image_rows(figures: dict[str, dict[str, float]]) -> list[tuple[str, list[str]]]:
    """The table's rows: (step, one cell per image)."""
    names = list(figures)

    def row(step: str, cell: Callable[[dict[str, float]], str]) -> tuple[str, list[str]]:
        return step, [cell(figures[n]) for n in names]

    rows = [
        row("image size (uncompressed)", lambda f: f"{f['size'] / 1e9:.2f} GB"),
        row("docker push (cold registry)",
            lambda f: f"{f['docker push']:.1f} s, {f['docker push bytes'] / 1e6:.0f} MB"),
    ]  # fmt: skip
    for codec in ("gzip", "zstd"):
        rows.append(row(
            f"aibuild push --compression {codec}, cold cache",
            lambda f, c=codec: f"{f[c + ' cold']:.1f} s ({f[c + ' cold'] / f['docker push']:.2f}x"
            f" docker push), {f[c + ' bytes'] / 1e6:.0f} MB",
        ))  # fmt: skip
        rows.append(row(
            f"aibuild push --compression {codec}, warm cache",
            lambda f, c=codec: f"{f[c + ' warm']:.1f} s ({f[c + ' warm'] / f['docker push']:.2f}x)",
        ))  # fmt: skip
        if all(f"{codec} cold baseline" in f for f in figures.values()):
            rows.append(row(
                "  the cold push by the baseline checkout",
                lambda f, c=codec: f"{f[c + ' cold baseline']:.1f} s "
                f"({f[c + ' cold baseline'] / f['docker push']:.2f}x); this one: "
                f"{f[c + ' cold'] / f[c + ' cold baseline']:.2f}x of it",
            ))  # fmt: skip
    if all("pull docker push" in f for f in figures.values()):
        for what, key in (("docker push", "pull docker push"), ("aibuild gzip", "pull gzip"),
                          ("aibuild zstd", "pull zstd")):  # fmt: skip
            rows.append(row(
                f"pull into Docker 26 containerd: pushed by {what}",
                lambda f, k=key: f"{f[k]:.1f} s ({f[k] / f['pull docker push']:.2f}x)",
            ))  # fmt: skip
    return rows


def _layer_sizes(image: str, layers: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """The zstd size of each layer of ``image`` over 10 MB, by its index in the manifest."""
    total = sum(s for _, s in layers)
    return [
        (f"  layer {n} of {image}", f"{size / 1e6:.0f} MB zstd ({100 * size / total:.1f}%)")
        for n, (_, size) in enumerate(layers)
        if size > 10e6
    ]


def change_rows(changes: list[list[str]], env: dict[str, str]) -> list[tuple[str, str]]:
    """For each (what, image A, image B): the zstd bytes of B's layers that A lacks, pushed
    to one empty registry with one blob cache (B's unchanged layers are A's blobs)."""
    rows = []
    with (
        throwaway_registry() as registry,
        tempfile.TemporaryDirectory(prefix="aibuild-bench-cache-") as cache,
    ):
        env = dict(env, AIBUILD_CACHE_DIR=cache)
        pushed: dict[str, list[tuple[str, int]]] = {}
        for what, image_a, image_b in changes:
            fetched = []
            for image in (image_a, image_b):
                if image not in pushed:
                    tag = f"i{len(pushed)}"
                    _aibuild("push", image, "--to", f"{registry}/bench/change:{tag}", "--method",
                             "direct", "--compression", "zstd", env=env)  # fmt: skip
                    pushed[image] = _manifest_layers(registry, "bench/change", tag)
                fetched.append(pushed[image])
            have = {d for d, _ in fetched[0]}
            new = sum(s for d, s in fetched[1] if d not in have)
            total = sum(s for _, s in fetched[1])
            layers = sum(1 for d, _ in fetched[1] if d not in have)
            if len(pushed) == 2 and image_a in pushed:  # the first pair: A's layers, once
                rows += _layer_sizes(image_a, pushed[image_a])
            rows.append((f"a node fetches after a {what}",
                         f"{new / 1e6:.1f} MB of {total / 1e6:.0f} MB ({100 * new / total:.1f}%), "
                         f"{layers} of {len(fetched[1])} layer(s)"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", default=[], metavar="[NAME=]IMAGE",
                        help="an image to measure (repeatable: side by side)")  # fmt: skip
    parser.add_argument("--pull-host", default=None, help="DOCKER_HOST of the pull engine")
    parser.add_argument("--change", nargs=3, action="append", default=[],
                        metavar=("WHAT", "IMAGE_A", "IMAGE_B"))  # fmt: skip
    parser.add_argument("--baseline", type=Path, default=None, metavar="SRC",
                        help="another checkout (git worktree) whose cold pushes run beside "
                        "this one's")  # fmt: skip
    args = parser.parse_args(argv)
    env = dict(os.environ)
    images = dict(i.split("=", 1) if "=" in i else (i, i) for i in args.image)
    figures = {
        name: measure_image(image, args.pull_host, env, args.baseline)
        for name, image in images.items()
    }
    rows = image_rows(figures) if figures else []
    print(f"bench_publish: one run each, {time.strftime('%Y-%m-%d %H:%M')}")
    if rows:
        names = list(figures)
        widths = [max(len(r[0]) for r in rows)] + [
            max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)
        ]
        cells = [("step", names), *rows]
        for step, values in cells:
            line = f"  {step:<{widths[0]}}"
            line += "".join(f"  {v:<{w}}" for v, w in zip(values, widths[1:], strict=True))
            print(line.rstrip())
    if args.change:
        changes = change_rows(args.change, env)
        width = max(len(k) for k, _ in changes)
        for key, value in changes:
            print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
