"""How many traces per minute ``immunity learn`` gets through, end to end (reading the files,
the feature pass, learning the patterns and the cross-validated model, writing the pack).

Usage: uv run python bench/learning/learn_throughput.py [--jobs N] [--repeat R] TRACE_FILE...

Prints one line per run: traces, wall seconds, CPU seconds (this process and its workers), the
load average while it ran (the machine is shared: wall time depends on it, CPU time much less),
and traces per minute of wall time and per CPU-minute.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--jobs", type=int, default=None, help="--jobs of immunity learn (default: its own default)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--format", default="auto")
    args = ap.parse_args()
    from immunity.learning.data import read_runs

    n = len(read_runs(args.paths, args.format, on_problem=lambda _m: None))
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            cmd = [sys.executable, "-c", "from immunity.cli import main; main()", "learn", "--format", args.format,
                   *args.paths, "--out", os.path.join(tmp, "pack.json")]
            if args.jobs:
                cmd += ["--jobs", str(args.jobs)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            load = (load0 + os.getloadavg()[0]) / 2
            print(f"immunity learn: {n} traces, jobs {args.jobs or 'default'}, {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"load avg {load:.1f} on {os.cpu_count()} cores: {n / wall * 60:,.0f} traces/min wall, "
                  f"{n / cpu * 60:,.0f} traces per CPU-minute", flush=True)


if __name__ == "__main__":
    main()
