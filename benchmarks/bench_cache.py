"""Cache and cold-build benchmark: aibuild's image against a naive Dockerfile, side by side.

For a profile (the cpu one, or with ``--profile gpu-h200`` the CUDA image: torch 2.13.0
cu130 from PyPI's wheels) it measures, on a real engine, through aibuild's own build path
(``pipeline.build_plan``: the wheelhouse served on loopback, one stage):

1. a cold build (``--no-cache``) against a naive single-stage Dockerfile that installs
   the same packages with pip (``COPY . /app`` first, the wheelhouse copied in, no
   cleanup), as a ratio;
2. a no-op rebuild, and rebuilds after a training-only change and after a change to
   the code shipped in the image, each as a ratio to the no-op rebuild (the naive
   Dockerfile's rebuild after the training change beside them);
3. the final image sizes, and aibuild's image against its floor: the base, plus
   Python (its apt layer), plus the installed wheels (the venv).

With ``--project PROFILE`` (a profile inside its own ``project:`` folder, such as
``examples/mnist/aibuild.yaml``), on a copy of that folder: a no-op rebuild, a rebuild
after a code edit (a line added to a .py file) and one after a requirements edit (a
requirement added), each the median of a few, as ratios to the no-op rebuild, with the
steps each rebuilt (torch's must never be among them).

    python benchmarks/bench_cache.py [--profile cpu|gpu-h200] [--base-image IMG]
                                     [--wheelhouse DIR] [--skip-naive] [--json FILE]
    python benchmarks/bench_cache.py --project examples/mnist/aibuild.yaml [--rounds 3]

Defaults come from the test environment (``.aibuild-test-env``: AIBUILD_TEST_BASE_IMAGE,
AIBUILD_TEST_WHEELHOUSE, and AIBUILD_TEST_DEV_WHEELHOUSE for a project whose profile
asks for a dev image; the CUDA wheelhouse from ``make test-heavy``). Cold builds take
minutes on a small machine; the figures move with its load: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aibuild.engine import get_client  # noqa: E402
from aibuild.image.build import BuildSettings, build_context  # noqa: E402
from aibuild.image.render import write_context  # noqa: E402
from aibuild.pipeline import build_plan, plan_build  # noqa: E402
from aibuild.profile.plan import RenderOptions  # noqa: E402

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


def aibuild_build(
    client: Any, profile: str, sets: list[str], options: RenderOptions, **settings: Any
) -> tuple[float, str]:
    """(seconds, image id) of a build through aibuild's own pipeline."""
    seconds, result = timed_build(client, profile, sets, options, **settings)
    return seconds, result.image_id


def timed_build(
    client: Any, profile: str, sets: list[str], options: RenderOptions, **settings: Any
) -> tuple[float, Any]:
    """(seconds, BuildResult): the render, the build (and the dev image's, when the profile
    has one) and the package inspection, as `aibuild image` does them."""
    plan, opts, facts = plan_build(client, profile, sets, options)
    with tempfile.TemporaryDirectory(prefix="aibuild-bench-records-") as records:
        started = time.monotonic()
        result = build_plan(
            client, plan, opts, BuildSettings(record_dir=records, **settings), facts=facts
        )
        return time.monotonic() - started, result


def project_rebuilds(
    client: Any, profile: Path, sets: list[str], options: RenderOptions, rounds: int
) -> dict[str, Any]:
    """No-op, code-edit and requirements-edit rebuilds of a copy of PROFILE's project."""
    plan, _, _ = plan_build(None, str(profile), sets, options)
    if plan.project is None or not profile.resolve().is_relative_to(plan.project.path):
        raise SystemExit(f"{profile}: --project takes a profile inside its project: folder")
    source = Path(plan.project.path)
    with tempfile.TemporaryDirectory(prefix="aibuild-bench-project-") as tmp:
        copy = Path(tmp) / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        copied = str(copy / profile.resolve().relative_to(source))
        code = sorted(copy.rglob("*.py"))[0]
        requirements = Path(plan.project.requirements_file or copy / "requirements.txt")
        requirements = copy / requirements.relative_to(source)
        build = lambda: timed_build(client, copied, sets, options)  # noqa: E731
        print(f"== {profile}: warm-up build, then {rounds} rounds", flush=True)
        build()

        def measure(change: Callable[[int], None]) -> tuple[float, list[str]]:
            times, rebuilt = [], []
            for i in range(rounds):
                build()  # from the state before the change, every round
                change(i)
                seconds, result = build()
                times.append(seconds)
                rebuilt = [s.instruction for s in result.steps if not s.cached]
            return statistics.median(times), rebuilt

        base_code, base_reqs = code.read_text(), requirements.read_text()
        noop, _ = measure(lambda i: None)
        edit, code_steps = measure(
            lambda i: code.write_text(f"{base_code}\n# edit {random.random()}\n")
        )
        reqs, req_steps = measure(
            lambda i: requirements.write_text(f"{base_reqs}\nmpmath!=0.{random.randrange(10**9)}\n")
        )
    return {
        "project": str(profile),
        "rounds": rounds,
        "noop_rebuild_s": round(noop, 2),
        "code_edit_rebuild_s": round(edit, 2),
        "code_edit_ratio": round(edit / noop, 2),
        "code_edit_rebuilt": [i for i in code_steps if not i.startswith("FROM")],
        "requirements_edit_rebuild_s": round(reqs, 2),
        "requirements_edit_ratio": round(reqs / noop, 2),
        "requirements_edit_rebuilt": [i[:60] for i in req_steps if not i.startswith("FROM")],
        "torch_reinstalled": any("torch==" in i for i in req_steps),
    }


def naive_build(client: Any, context: Path, tag: str, **kw: Any) -> float:
    started = time.monotonic()
    build_context(client, context, tags=[tag], network_mode="host", **kw)
    return time.monotonic() - started


def naive_context(
    client: Any, profile: str, sets: list[str], options: RenderOptions, dest: Path, base: str
) -> Path:
    plan, opts, _ = plan_build(client, profile, sets, options)
    write_context(plan, dest, opts)  # copies the wheelhouse in, as the naive way does
    (dest / ".dockerignore").unlink(missing_ok=True)
    (dest / "Dockerfile").write_text(NAIVE_DOCKERFILE.format(base=base, torch=plan.torch))
    return dest


def floor_mb(client: Any, image: str, base: str) -> float:
    """The base, plus Python (the apt layer), plus the installed wheels (the venv)."""
    venv = client.containers.run(
        image, ["du", "-sb", "/opt/venv"], entrypoint=[], remove=True, network_disabled=True
    )
    history = client.api.history(image)
    apt = max(
        (h["Size"] for h in history if "apt-get install" in (h.get("CreatedBy") or "")),
        default=0,
    )
    size = client.images.get(base).attrs["Size"] + apt + int(bytes(venv).split()[0])
    return size / 1e6


def size_mb(client: Any, image: str) -> float:
    return float(client.images.get(image).attrs["Size"]) / 1e6


def main(argv: list[str] | None = None) -> int:
    defaults = env_file_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=["cpu", "gpu-h200"])
    parser.add_argument("--base-image", default=defaults.get("AIBUILD_TEST_BASE_IMAGE"))
    parser.add_argument("--wheelhouse")
    parser.add_argument("--skip-naive", action="store_true", help="only aibuild's builds")
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    parser.add_argument(
        "--project",
        type=Path,
        metavar="PROFILE",
        help="rebuilds after code and requirements edits of this profile's project instead",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rebuilds per figure (median)")
    args = parser.parse_args(argv)
    if "DOCKER_HOST" not in os.environ and defaults.get("DOCKER_HOST"):
        os.environ["DOCKER_HOST"] = defaults["DOCKER_HOST"]
    if args.project is not None:
        wheelhouse = args.wheelhouse or defaults.get("AIBUILD_TEST_DEV_WHEELHOUSE")
        client = get_client()
        sets = ["software.torch=2.13.0", "software.python=3.11", "image.name=aibuild-bench/project"]
        options = RenderOptions(base_image=args.base_image, wheelhouse=wheelhouse)
        figures = project_rebuilds(client, args.project, sets, options, args.rounds)
        for key, value in figures.items():
            print(f"{key:34} {value}")
        plan, _, _ = plan_build(None, str(args.project), sets, options)
        for ref in (plan.image_ref, plan.dev_image_ref):
            with contextlib.suppress(Exception):
                client.images.remove(ref, force=True)
        client.close()
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    cuda = args.profile != "cpu"
    wheelhouse = args.wheelhouse or (
        str(ROOT / ".cache" / "wheelhouse-cu130") if cuda else defaults["AIBUILD_TEST_WHEELHOUSE"]
    )
    sets = [
        "software.torch=2.13.0",
        "software.python=3.11",
        f"image.name=aibuild-bench/{args.profile}",
    ]

    client = get_client()
    options = RenderOptions(base_image=args.base_image, wheelhouse=wheelhouse)
    figures: dict[str, Any] = {"profile": args.profile, "base_image": args.base_image}
    naive_tag = f"aibuild-bench/naive-{args.profile}:bench"
    ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aibuild-bench-") as tmp:
        work = Path(tmp)
        print(f"== {args.profile}: cold build (--no-cache), aibuild", flush=True)
        cold, image = aibuild_build(client, args.profile, sets, options, nocache=True)
        noop, _ = aibuild_build(client, args.profile, sets, options)
        epochs = [f"training.epochs={random.randint(100, 10**6)}"]
        train_change, _ = aibuild_build(client, args.profile, [*sets, *epochs], options)
        ids.append(image)
        figures.update(
            cold_build_s=round(cold, 1),
            noop_rebuild_s=round(noop, 2),
            training_change_rebuild_s=round(train_change, 2),
            training_change_ratio=round(train_change / noop, 2),
            image_size_mb=round(size_mb(client, image), 1),
            floor_mb=round(floor_mb(client, image, args.base_image), 1),
        )
        figures["size_over_floor"] = round(figures["image_size_mb"] / figures["floor_mb"], 3)
        if not args.skip_naive:
            print("== naive single-stage Dockerfile: cold build, then the training change")
            naive = naive_context(
                client, args.profile, sets, options, work / "naive", args.base_image
            )
            naive_cold = naive_build(client, naive, naive_tag, nocache=True)
            changed = naive_context(
                client, args.profile, [*sets, "training.epochs=3"], options,
                work / "naive2", args.base_image,
            )  # fmt: skip
            naive_change = naive_build(client, changed, naive_tag)
            figures.update(
                naive_cold_build_s=round(naive_cold, 1),
                cold_ratio=round(cold / naive_cold, 2),
                naive_training_change_rebuild_s=round(naive_change, 1),
                naive_image_size_mb=round(size_mb(client, naive_tag), 1),
            )
        for key, value in figures.items():
            print(f"{key:34} {value}")
        ids += [naive_tag, f"aibuild-bench/{args.profile}:{args.profile}-torch2.13.0-"]
        ids[-1] += "cpu" if not cuda else "cu130"  # the tag the builds above moved
    for ref in ids:
        with contextlib.suppress(Exception):
            client.images.remove(ref, force=True)
    client.images.prune(filters={"dangling": True})
    client.close()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
