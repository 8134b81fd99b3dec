"""How many traces per minute ``immunity learn`` gets through, end to end (reading the files,
mapping the steps, the feature pass, learning the patterns and the cross-validated model, writing
the pack), in a fresh process each time.

Usage: uv run python bench/learning/learn_throughput.py [--jobs N] [--repeat R] [--no-bytecode] TRACE_FILE...

Prints one line per run and then the medians: traces, wall seconds, CPU seconds (the process and
its workers), the load average while it ran (the machine may be shared: wall time depends on it,
CPU time much less), traces per minute of wall time, and traces per CPU-minute. ``best case on N
idle cores`` is traces per CPU-minute times N: what the CPU time allows when every core is free
and the work splits perfectly; it is an upper bound, not a measurement.

The child runs with Python's bytecode cache on (``PYTHONDONTWRITEBYTECODE`` removed from its
environment), as an installed package has it; a first, uncounted run writes the cache.
``--no-bytecode`` keeps the environment as it is (each run then compiles every module it imports).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def one(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, (load0 + os.getloadavg()[0]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--jobs", type=int, default=None, help="--jobs of immunity learn (default: its own default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if it is set")
    args = ap.parse_args()
    from immunity.learning.data import read_runs

    try:
        n = len(read_runs(args.paths, args.format, on_problem=lambda _m: None, mapping=False))
    except TypeError:  # an older immunity (PYTHONPATH set to compare with it)
        n = len(read_runs(args.paths, args.format, on_problem=lambda _m: None))
    env = dict(os.environ)
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", "from immunity.cli import main; main()", "learn", "--format", args.format,
               *args.paths, "--out", os.path.join(tmp, "pack.json")]
        if args.jobs:
            cmd += ["--jobs", str(args.jobs)]
        if not args.no_bytecode:
            one(cmd, env)  # writes the bytecode cache; not counted
        runs = []
        for _ in range(args.repeat):
            wall, cpu, load = one(cmd, env)
            runs.append((wall, cpu, load))
            print(f"immunity learn: {n} traces, jobs {args.jobs or 'default'}, {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"load avg {load:.1f} on {cores} cores: {n / wall * 60:,.0f} traces/min wall, "
                  f"{n / cpu * 60:,.0f} traces per CPU-minute", flush=True)
    wall, cpu, load = (statistics.median(r[i] for r in runs) for i in range(3))
    print(f"median of {len(runs)}: {wall:.1f} s wall, {cpu:.1f} s CPU, load avg {load:.1f}: {n / wall * 60:,.0f} "
          f"traces/min wall, {n / cpu * 60:,.0f} traces per CPU-minute; best case on {cores} idle cores "
          f"{n / cpu * 60 * cores:,.0f} traces/min (bytecode cache {'off' if args.no_bytecode else 'on'})")


if __name__ == "__main__":
    main()
