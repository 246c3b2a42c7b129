"""Publishing and pulling an image, side by side: `docker push` against `aibuild push` (gzip
and zstd, cold and warm blob cache), the pull of each into a fresh Docker 26 engine with the
containerd store, and the bytes a node must fetch between two images (after a code edit, a
requirements change, a torch-only pin change, a CUDA change).

    python benchmarks/bench_publish.py --image IMAGE --registry 127.0.0.1:5000 \\
        --pull-host unix:///var/lib/docker-modern-containerd/docker.sock \\
        [--change "torch-only pin change" IMAGE_A IMAGE_B]...

Each figure is one run; everything it pushes goes to a repository of its own
(REGISTRY/aibuild-bench-<pid>/...), and what it pulls is removed from the pull engine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _aibuild(*args: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "aibuild", *args], check=True, env=env,
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


def _pull(ref: str, host: str) -> float:
    took = _timed_docker("pull", "-q", ref, host=host)
    _docker("image", "rm", "-f", ref, host=host)
    return took


def _manifest_layers(registry: str, repository: str, tag: str) -> list[tuple[str, int]]:
    import urllib.request

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--pull-host", default=None, help="DOCKER_HOST of the pull engine")
    parser.add_argument("--change", nargs=3, action="append", default=[],
                        metavar=("WHAT", "IMAGE_A", "IMAGE_B"))  # fmt: skip
    args = parser.parse_args(argv)
    repo = f"aibuild-bench-{os.getpid()}"
    env = dict(os.environ)
    rows: list[tuple[str, str]] = []
    size = int(_docker("image", "inspect", "-f", "{{.Size}}", args.image).stdout.strip())
    rows.append(("image size (uncompressed)", f"{size / 1e9:.2f} GB"))
    refs: dict[str, str] = {}
    tag_ref = f"{args.registry}/{repo}/engine:bench"
    _docker("tag", args.image, tag_ref)
    try:
        docker_s = _timed_docker("push", "-q", tag_ref)
    finally:
        _docker("image", "rm", tag_ref)
    refs["docker push"] = tag_ref
    rows.append(("docker push", f"{docker_s:.1f} s"))
    for compression in ("gzip", "zstd"):
        ref = f"{args.registry}/{repo}/{compression}:bench"
        with tempfile.TemporaryDirectory(prefix="aibuild-bench-cache-") as cache:
            env["AIBUILD_CACHE_DIR"] = cache
            cold = _aibuild("push", args.image, "--to", ref, "--method", "direct",
                            "--compression", compression, env=env)  # fmt: skip
            # warm: the blob cache holds the layers; a new repository makes the upload real
            warm_ref = f"{args.registry}/{repo}/{compression}-warm:bench"
            warm = _aibuild("push", args.image, "--to", warm_ref, "--method", "direct",
                            "--compression", compression, env=env)  # fmt: skip
        refs[f"aibuild push {compression}"] = ref
        sent = sum(s for _, s in _manifest_layers(args.registry, f"{repo}/{compression}", "bench"))
        ratio = f"{cold / docker_s:.2f}x docker push"
        rows.append((f"aibuild push --compression {compression}, cold cache",
                     f"{cold:.1f} s ({ratio}), {sent / 1e6:.0f} MB"))  # fmt: skip
        rows.append((f"aibuild push --compression {compression}, warm cache",
                     f"{warm:.1f} s ({warm / docker_s:.2f}x docker push)"))  # fmt: skip
    if args.pull_host:
        pulls = {name: _pull(ref, args.pull_host) for name, ref in refs.items()}
        base = pulls["docker push"]
        for name, took in pulls.items():
            rows.append((f"pull into Docker 26 containerd: {name}",
                         f"{took:.1f} s ({took / base:.2f}x)"))  # fmt: skip
    for what, image_a, image_b in args.change:
        fetched = []
        for n, image in enumerate((image_a, image_b)):
            ref = f"{args.registry}/{repo}/change:{n}"
            _aibuild("push", image, "--to", ref, "--method", "direct", "--compression", "zstd",
                     env=env)  # fmt: skip
            fetched.append(_manifest_layers(args.registry, f"{repo}/change", str(n)))
        have = {d for d, _ in fetched[0]}
        new = sum(s for d, s in fetched[1] if d not in have)
        total = sum(s for _, s in fetched[1])
        layers = sum(1 for d, _ in fetched[1] if d not in have)
        rows.append((f"a node fetches after a {what}",
                     f"{new / 1e6:.1f} MB of {total / 1e6:.0f} MB ({100 * new / total:.1f}%), "
                     f"{layers} layer(s)"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print(f"bench_publish: {args.image} (registry {args.registry}, one run each)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
