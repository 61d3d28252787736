"""Time how long ``fedlora --help`` and ``fedlora list`` take to start; prints JSON.

Each command runs ``--repeats`` times as a fresh subprocess (the way a user types it). Wall
time depends on how busy the machine is, so the CPU time the subprocess used (user + system)
and the load average are reported beside it.

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {"help": ["--help"], "list": ["list"]}


def time_once(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``fedlora`` subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from fedlora.cli import app; app()", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    results = {}
    for name, args in COMMANDS.items():
        walls, cpus = zip(*(time_once(args) for _ in range(repeats)), strict=True)
        results[name] = {
            "median_wall_s": round(statistics.median(walls), 3),
            "median_cpu_s": round(statistics.median(cpus), 3),
            "min_wall_s": round(min(walls), 3),
        }
    print(
        json.dumps(
            {"repeats": repeats, "load_average_1min": os.getloadavg()[0], **results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
