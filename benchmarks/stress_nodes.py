"""Stress the end of a 2-node gloo job: ``aibuild run --nodes 2`` N times, count the bad ends.

    python benchmarks/stress_nodes.py IMAGE [--runs 60] [--budget 3600] [--json]

Each run is one real ``aibuild run IMAGE --nodes 2 --nproc-per-node 1`` on the Docker
engine of ``DOCKER_HOST``: two containers, torchrun's c10d rendezvous, a DDP job on gloo
(the mlp on the bundled digits, one epoch: a few seconds of training), so that most of a
run is its start and its teardown, where the abort was seen. A run is bad when aibuild
exits non-zero (a node, and so a rank, did not exit 0) or when any line says ``terminate
called`` (the C++ abort of a gloo worker thread that releases a collective's tensor in a
finalizing interpreter: docs/trainjob-skypilot.md), even if the exit code hid it.

Runs are sequential; a new one starts only while the ``--budget`` (seconds) lasts, and
each has its own ``--timeout``. Every container and network a run makes carries the label
``ai.aibuild.stress=<this invocation>`` and has a unique name; whatever is left behind
(a killed run) is removed at the end. The logs of bad runs are kept under ``--logs``.

Printed: one line a run, then the count of bad runs out of the runs made, the aborts
among them, and the mean and longest run time. Not a test: it needs minutes and a
quiet engine, and a 3% fault needs about 100 runs to be seen with 95% confidence.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

LABEL = "ai.aibuild.stress"
TRAINER = ("--model", "mlp", "--epochs", "1")
ABORT = re.compile(r"terminate called|Aborted \(core dumped\)|exitcode\s*:\s*-6|SIGABRT")


def one_run(image: str, name: str, label: str, out: Path, timeout: float) -> dict[str, object]:
    """One ``aibuild run --nodes 2``: its exit code, seconds and whether any line aborted."""
    argv = [
        sys.executable,
        "-m",
        "aibuild",
        "run",
        image,
        "--nodes",
        "2",
        "--nproc-per-node",
        "1",
        "--name",
        name,
        "--label",
        f"{LABEL}={label}",
        "--output",
        str(out),
        "--",
        *TRAINER,
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = -1
        text = f"{exc.stdout or ''}{exc.stderr or ''}\n(timed out after {timeout:g}s)"
        if isinstance(text, bytes):  # pragma: no cover - text=True gives str
            text = text.decode(errors="replace")
    return {
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 2),
        "aborted": bool(ABORT.search(text)),
        "log": text,
    }


def remove_leftovers(label: str) -> int:
    """Remove the containers and networks this invocation left (by its label); how many."""
    removed = 0
    for kind, ls, rm in (
        ("container", ["docker", "ps", "-aq"], ["docker", "rm", "-f"]),
        ("network", ["docker", "network", "ls", "-q"], ["docker", "network", "rm"]),
    ):
        found = subprocess.run(
            [*ls, "--filter", f"label={LABEL}={label}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if found:
            subprocess.run([*rm, *found], capture_output=True, check=False)
            removed += len(found)
            print(f"removed {len(found)} leftover {kind}(s)", flush=True)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", help="an aibuild image with torch (e.g. the cpu profile's)")
    parser.add_argument("--runs", type=int, default=60, help="runs to make (default 60)")
    parser.add_argument(
        "--budget", type=float, default=3600, help="seconds; no run starts after (default 3600)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    parser.add_argument("--logs", type=Path, help="keep bad runs' logs here (default: a tmp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    label = f"stress-{uuid.uuid4().hex[:8]}"
    logs = args.logs or Path(tempfile.mkdtemp(prefix=f"aibuild-{label}-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.runs} runs of `aibuild run {args.image} --nodes 2` on "
        f"{os.environ.get('DOCKER_HOST', 'the default engine')}, budget {args.budget:g}s, "
        f"label {LABEL}={label}",
        flush=True,
    )
    deadline = time.monotonic() + args.budget
    results: list[dict[str, object]] = []
    try:
        for i in range(args.runs):
            if time.monotonic() >= deadline:
                print(f"budget spent after {i} runs", flush=True)
                break
            with tempfile.TemporaryDirectory(prefix="aibuild-stress-out-") as out:
                os.chmod(out, 0o777)  # the image's user (1000) writes here
                result = one_run(args.image, f"{label}-{i}", label, Path(out), args.timeout)
            bad = result["exit_code"] != 0 or result["aborted"]
            if bad:
                (logs / f"run-{i}.log").write_text(str(result["log"]))
            results.append({k: v for k, v in result.items() if k != "log"})
            print(
                f"run {i + 1:3d}: exit {result['exit_code']:>3} {result['seconds']:6.1f}s"
                + ("  ABORT" if result["aborted"] else "")
                + (f"  BAD (log: {logs / f'run-{i}.log'})" if bad else ""),
                flush=True,
            )
    finally:
        remove_leftovers(label)
    done = len(results)
    bad_runs = sum(1 for r in results if r["exit_code"] != 0 or r["aborted"])
    aborts = sum(1 for r in results if r["aborted"])
    seconds = [float(str(r["seconds"])) for r in results]
    figures = {
        "runs": done,
        "bad_runs": bad_runs,
        "aborts": aborts,
        "mean_s": round(sum(seconds) / done, 2) if done else None,
        "max_s": max(seconds) if seconds else None,
    }
    print(
        f"{bad_runs}/{done} runs had a rank that did not exit 0 ({aborts} with an abort "
        f"message); mean {figures['mean_s']}s, longest {figures['max_s']}s a run"
    )
    if args.json:
        print(json.dumps(figures))
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
