"""Cache benchmark: what aibuild's layer order buys, against a real Docker engine.

Measures, for the cpu profile (torch 2.13.0 CPU):

1. a no-op rebuild (same context, everything cached);
2. a rebuild after a training-only change (``--set training.epochs=N``), as a ratio
   to (1): only the profile layers and labels may rebuild, no package install;
3. a cold build (``--no-cache``) of aibuild's multi-stage Dockerfile against a naive
   single-stage Dockerfile that installs the same packages (``COPY . /app`` first, no
   cleanup), and the naive one's rebuild after the same training-only change;
4. the final image sizes side by side.

    python benchmarks/bench_cache.py [--base-image IMG] [--wheelhouse DIR] [--network MODE]
                                     [--skip-cold] [--json FILE]

Defaults come from the test environment (``.aibuild-test-env``: AIBUILD_TEST_BASE_IMAGE,
AIBUILD_TEST_WHEELHOUSE, AIBUILD_TEST_BUILD_NETWORK), else python:3.11-slim-bookworm
and PyTorch's CPU index. Cold builds take minutes each on a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aibuild.engine import get_client  # noqa: E402
from aibuild.image.build import build_context  # noqa: E402
from aibuild.image.render import requirements_text, write_context  # noqa: E402
from aibuild.pipeline import plan_build  # noqa: E402
from aibuild.profile.plan import RenderOptions  # noqa: E402

SETS = ["software.torch=2.13.0", "software.python=3.11", "image.name=aibuild-bench/cpu"]

NAIVE_DOCKERFILE = """\
# The naive way: one stage, sources first, no cleanup.
FROM {base}
RUN apt-get update && apt-get install -y python3 python3-venv python3-pip
COPY . /app
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-index --find-links /app/wheelhouse torch=={torch} \\
 && /opt/venv/bin/pip install --no-index --find-links /app/wheelhouse -r /app/requirements.txt
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app/runtime AIBUILD_PROFILE=/app/profile.yaml
WORKDIR /app
ENTRYPOINT ["python", "-m", "aibuild", "train"]
"""


def env_file_defaults() -> dict[str, str]:
    values: dict[str, str] = {}
    path = ROOT / ".aibuild-test-env"
    if path.is_file():
        for line in path.read_text().splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    values[name] = value
    values.update({k: v for k, v in os.environ.items() if k.startswith("AIBUILD_TEST_")})
    return values


def timed_build(client: Any, context: Path, tag: str, network: str | None, **kw: Any) -> float:
    started = time.monotonic()
    build_context(client, context, tags=[tag], network_mode=network, **kw)
    return time.monotonic() - started


def render(client: Any, dest: Path, options: RenderOptions, extra: list[str]) -> Path:
    plan, opts, _ = plan_build(client, "cpu", [*SETS, *extra], options)
    if dest.exists():
        shutil.rmtree(dest)
    return write_context(plan, dest, opts)


def naive_context(aibuild_context: Path, dest: Path, base: str, torch: str) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(aibuild_context, dest)
    (dest / ".dockerignore").unlink(missing_ok=True)
    (dest / "Dockerfile").write_text(NAIVE_DOCKERFILE.format(base=base, torch=torch))
    return dest


def size_mb(client: Any, tag: str) -> float:
    return float(client.images.get(tag).attrs["Size"]) / 1e6


def main(argv: list[str] | None = None) -> int:
    defaults = env_file_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=defaults.get("AIBUILD_TEST_BASE_IMAGE"))
    parser.add_argument("--wheelhouse", default=defaults.get("AIBUILD_TEST_WHEELHOUSE"))
    parser.add_argument("--network", default=defaults.get("AIBUILD_TEST_BUILD_NETWORK"))
    parser.add_argument("--skip-cold", action="store_true", help="only the warm rebuilds")
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    args = parser.parse_args(argv)
    if "DOCKER_HOST" not in os.environ and defaults.get("DOCKER_HOST"):
        os.environ["DOCKER_HOST"] = defaults["DOCKER_HOST"]

    client = get_client()
    options = RenderOptions(base_image=args.base_image, wheelhouse=args.wheelhouse)
    figures: dict[str, Any] = {"base_image": args.base_image, "wheelhouse": args.wheelhouse}
    tag = "aibuild-bench/cpu:bench"
    naive_tag = "aibuild-bench/naive:bench"
    with tempfile.TemporaryDirectory(prefix="aibuild-bench-") as tmp:
        work = Path(tmp)
        context = render(client, work / "ctx", options, ["training.epochs=2"])
        plan_torch = "2.13.0"
        print("warming the cache (first build may take minutes)...", flush=True)
        figures["warm_s"] = round(timed_build(client, context, tag, args.network), 2)

        noop = timed_build(client, context, tag, args.network)
        epochs = random.randint(3, 10_000)
        changed = render(client, work / "ctx2", options, [f"training.epochs={epochs}"])
        train_change = timed_build(client, changed, tag, args.network)
        figures.update(
            noop_rebuild_s=round(noop, 2),
            training_change_rebuild_s=round(train_change, 2),
            training_change_ratio=round(train_change / noop, 2),
        )
        print(f"no-op rebuild:                 {noop:8.1f} s")
        print(f"rebuild after training change: {train_change:8.1f} s  ({train_change / noop:.2f}x)")

        if not args.skip_cold:
            print("cold builds (--no-cache), aibuild then naive...", flush=True)
            cold = timed_build(client, context, tag, args.network, nocache=True)
            naive = naive_context(context, work / "naive", args.base_image, plan_torch)
            naive_cold = timed_build(client, naive, naive_tag, args.network, nocache=True)
            naive2 = naive_context(changed, work / "naive2", args.base_image, plan_torch)
            naive_change = timed_build(client, naive2, naive_tag, args.network)
            figures.update(
                cold_build_s=round(cold, 1),
                naive_cold_build_s=round(naive_cold, 1),
                naive_training_change_rebuild_s=round(naive_change, 1),
                image_size_mb=round(size_mb(client, tag), 1),
                naive_image_size_mb=round(size_mb(client, naive_tag), 1),
            )
            print(f"cold build, aibuild multi-stage: {cold:8.1f} s")
            print(f"cold build, naive single-stage:  {naive_cold:8.1f} s")
            print(f"naive rebuild after training change: {naive_change:8.1f} s")
            print(
                f"image size: aibuild {figures['image_size_mb']:.0f} MB, "
                f"naive {figures['naive_image_size_mb']:.0f} MB"
            )
        text = requirements_text(plan_build(client, "cpu", SETS, options)[0])
        figures["requirements"] = [r for r in text.splitlines() if r and not r.startswith("#")]
    client.close()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
