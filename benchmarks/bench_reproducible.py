"""Reproducible-publish benchmark: what ``--reproducible`` adds to a build and push.

For the cpu profile (torch 2.13.0 CPU), side by side:

- plain:        build (``aibuild image``)           + ``docker push`` through the engine
- reproducible: build (rendered reproducible)       + SBOM layer + normalise
                (save -> rewrite -> load)            + aibuild's own push (export,
                deterministic gzip, upload)

Each push goes to a new repository of the local registry, and the direct push starts
from an empty blob cache, so both pay for every layer. ``--no-cache`` makes both builds
cold (minutes each); by default they reuse the engine's layer cache, which isolates
the publishing overhead. The reproducible build is done twice when ``--twice`` is
given, and the two image IDs and registry digests are compared.

    python benchmarks/bench_reproducible.py [--base-image IMG] [--wheelhouse DIR]
        [--registry HOST:PORT] [--network MODE] [--no-cache] [--twice] [--json FILE]

Defaults come from the test environment (``.aibuild-test-env``). The image embeds
aibuild's own code: run it from a checkout nobody edits meanwhile, or ``--twice``
reports (rightly) two different images; ``aibuild diff`` names the files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aibuild.engine import get_client  # noqa: E402
from aibuild.image.build import BuildSettings  # noqa: E402
from aibuild.oci.archive import BlobCache  # noqa: E402
from aibuild.pipeline import build_image, make_reproducible  # noqa: E402
from aibuild.profile.plan import RenderOptions  # noqa: E402
from aibuild.publish.push import direct_push, engine_push  # noqa: E402

SETS = ("software.torch=2.13.0", "software.python=3.11", "image.name=aibuild-bench/repro")
EPOCH = 1_700_000_000


def env_file_defaults() -> dict[str, str]:
    values: dict[str, str] = {}
    path = ROOT / ".aibuild-test-env"
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip().removeprefix("export ")
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                values[name] = value
    values.update({k: v for k, v in os.environ.items() if k.startswith("AIBUILD_TEST_")})
    return values


def timed(what: str, timings: dict[str, float], func: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.monotonic()
    result = func(*args, **kwargs)
    timings[what] = round(time.monotonic() - started, 2)
    print(f"  {what:<22} {timings[what]:8.1f} s", flush=True)
    return result


ENGINE_VARS = {
    "docker20.10": "DOCKER_HOST",
    "docker26-classic": "AIBUILD_TEST_CLASSIC26_DOCKER_HOST",
    "docker26-containerd": "AIBUILD_TEST_CONTAINERD26_DOCKER_HOST",
}
TORCH_FREE = '{% extends "aibuild/Dockerfile.j2" %}\n{% block torch %}{% endblock %}\n'


def engines_main(args: argparse.Namespace, defaults: dict[str, str]) -> int:
    """The cpu profile built reproducibly on each engine: one registry digest expected."""
    import subprocess

    path = ROOT / ".aibuild-test-env"
    hosts = {}
    for name, var in ENGINE_VARS.items():
        value = defaults.get(var) or ""
        if var == "DOCKER_HOST" and path.is_file():
            for line in path.read_text().splitlines():
                if line.startswith("export DOCKER_HOST="):
                    value = line.partition("=")[2]
        if value:
            hosts[name] = value
    run_id = uuid.uuid4().hex[:8]
    rows = []
    with tempfile.TemporaryDirectory(prefix="aibuild-bench-engines-") as tmp:
        extra: list[str] = []
        if args.without_torch:
            (Path(tmp) / "templates").mkdir()
            (Path(tmp) / "templates" / "Dockerfile.j2").write_text(TORCH_FREE)
            extra = ["--template-dir", str(Path(tmp) / "templates")]
        for engine, host in hosts.items():
            work = Path(tmp) / engine
            work.mkdir()
            repo = f"{args.registry}/aibuild-bench/engines-{run_id}-{engine.replace('.', '-')}"
            command = [
                sys.executable, "-m", "aibuild", "image", "cpu",
                "--base-image", args.base_image, "--wheelhouse", str(args.wheelhouse),
                *[w for s in SETS[:2] for w in ("--set", s)], "--set", f"image.name={repo}",
                *extra, "--reproducible", "--no-cache", "--push", "--json",
            ]  # fmt: skip
            env = {
                **os.environ,
                "DOCKER_HOST": host,
                "SOURCE_DATE_EPOCH": str(EPOCH),
                "AIBUILD_CACHE_DIR": str(work / "cache"),
                "AIBUILD_BUILD_NETWORK": args.network or "",
                "PYTHONPATH": str(ROOT),
            }
            started = time.monotonic()
            done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
            seconds = time.monotonic() - started
            if done.returncode != 0:
                rows.append((engine, "FAILED: " + done.stderr.strip().splitlines()[-1], seconds))
                continue
            result = json.loads(done.stdout)
            rows.append((engine, result["pushed"][0].rpartition("@")[2], seconds))
            client = get_client(host)
            client.api.remove_image(result["final_image_id"], force=True)
            client.close()
    print(f"{'engine':<22}{'registry digest':<74}{'seconds':>8}")
    for engine, digest, seconds in rows:
        print(f"{engine:<22}{digest:<74}{seconds:>8.1f}")
    same = len({d for _, d, _ in rows}) == 1 and not rows[0][1].startswith("FAILED")
    print("one digest on every engine" if same else "the digests DIFFER")
    if args.json:
        args.json.write_text(
            json.dumps(
                [dict(zip(("engine", "digest", "seconds"), r, strict=True)) for r in rows], indent=1
            )
        )
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    defaults = env_file_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=defaults.get("AIBUILD_TEST_BASE_IMAGE"))
    parser.add_argument("--wheelhouse", default=defaults.get("AIBUILD_TEST_WHEELHOUSE"))
    parser.add_argument("--registry", default=defaults.get("AIBUILD_TEST_REGISTRY"))
    parser.add_argument("--network", default=defaults.get("AIBUILD_TEST_BUILD_NETWORK"))
    parser.add_argument("--no-cache", action="store_true", help="cold builds")
    parser.add_argument("--twice", action="store_true", help="two reproducible builds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--engines",
        action="store_true",
        help="build --reproducible --no-cache --push on each engine of .aibuild-test-env "
        "(20.10, 26 classic, 26 containerd) and print the digests side by side",
    )
    parser.add_argument(
        "--without-torch", action="store_true", help="with --engines: leave the torch step out"
    )
    args = parser.parse_args(argv)
    if not args.registry:
        parser.error("--registry is needed (or AIBUILD_TEST_REGISTRY)")
    if args.engines:
        return engines_main(args, defaults)

    client = get_client()
    options = RenderOptions(
        base_image=args.base_image,
        wheelhouse=str(Path(args.wheelhouse).resolve()) if args.wheelhouse else None,
    )
    settings = BuildSettings(nocache=args.no_cache, network_mode=args.network)
    run_id = uuid.uuid4().hex[:8]
    figures: dict[str, Any] = {"no_cache": args.no_cache}
    with tempfile.TemporaryDirectory(prefix="aibuild-bench-") as tmp:
        os.chdir(tmp)
        print("plain: build + engine push", flush=True)
        plain: dict[str, float] = {}
        result = timed("build", plain, build_image, "cpu", SETS, options, settings, None, client)
        pushed = timed(
            "push (engine)",
            plain,
            engine_push,
            client,
            result.image_id,
            f"{args.registry}/bench/plain-{run_id}:v1",
        )
        plain["total"] = round(sum(plain.values()), 2)
        figures["plain"] = {**plain, "image_id": result.image_id, "digest": pushed.digest}

        runs = []
        for attempt in range(2 if args.twice else 1):
            print(f"reproducible #{attempt + 1}: build + SBOM + normalise + direct push")
            repro: dict[str, float] = {}
            ropts = RenderOptions(
                base_image=options.base_image,
                wheelhouse=options.wheelhouse,
                reproducible=True,
                source_date_epoch=EPOCH,
            )
            rsettings = BuildSettings(
                nocache=args.no_cache or attempt > 0, network_mode=args.network
            )
            built = timed("build", repro, build_image, "cpu", SETS, ropts, rsettings, None, client)
            normalised = timed(
                "SBOM + normalise",
                repro,
                make_reproducible,
                client,
                built,
                source_date_epoch=EPOCH,
            )
            direct = timed(
                "push (direct)",
                repro,
                direct_push,
                client,
                normalised.image_id,
                f"{args.registry}/bench/repro-{run_id}-{attempt}:v1",
                cache=BlobCache(Path(tmp) / f"cache-{attempt}"),
            )
            repro["total"] = round(sum(repro.values()), 2)
            runs.append(
                {
                    **repro,
                    "normalise_only": normalised.seconds,
                    "image_id": normalised.image_id,
                    "digest": direct.digest,
                }
            )
        figures["reproducible"] = runs

    plain_publish = figures["plain"]["push (engine)"]
    first = figures["reproducible"][0]
    repro_publish = first["SBOM + normalise"] + first["push (direct)"]
    print()
    print(f"{'step':<24}{'plain':>10}{'reproducible':>14}")
    print(f"{'build (see note)':<24}{figures['plain']['build']:>9.1f}s{first['build']:>13.1f}s")
    print(f"{'SBOM + normalise':<24}{'-':>10}{first['SBOM + normalise']:>13.1f}s")
    print(f"{'push':<24}{plain_publish:>9.1f}s{first['push (direct)']:>13.1f}s")
    print(f"{'total':<24}{figures['plain']['total']:>9.1f}s{first['total']:>13.1f}s")
    print("note: the builds differ in what the engine's layer cache holds (a reproducible")
    print("render changes the package steps); compare the publishing rows.")
    overhead = repro_publish - plain_publish
    print(
        f"--reproducible adds {overhead:.1f}s to publishing (normalise + own push vs engine push)"
    )
    figures["overhead_s"] = round(overhead, 2)
    if len(figures["reproducible"]) == 2:
        a, b = figures["reproducible"]
        same_id, same_digest = a["image_id"] == b["image_id"], a["digest"] == b["digest"]
        print(
            f"two reproducible builds: same image ID {same_id}, same registry digest {same_digest}"
        )
        print(f"  {a['image_id']}\n  {a['digest']}")
        figures["identical"] = same_id and same_digest
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
