"""`aibuild --help` start-up time as a ratio to `python -c pass`.

Runs the commands interleaved (so machine load hits them alike) and prints the
median wall time of each and its ratio to the baseline.

    python benchmarks/bench_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -m aibuild --help": [sys.executable, "-m", "aibuild", "--help"],
    }
    script = shutil.which("aibuild")
    if script:
        commands["aibuild --help (console script)"] = [script, "--help"]
    for cmd in commands.values():  # warm the OS caches
        _time(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(_time(cmd))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<34} {'median ms':>10} {'ratio':>7}   ({args.runs} runs each, interleaved)")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:<34} {med * 1000:>10.1f} {med / base:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
