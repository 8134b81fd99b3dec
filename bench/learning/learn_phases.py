"""Where ``immunity learn``'s time goes, phase by phase, in this process (what the CLI does, one
pack per domain): importing, reading the files (mapping deferred), each domain's feature pass
(mapping, per-step features, signals, task and signature embedding), and its pack (patterns per
fold, sequence distances, model fits, calibration).

Usage: uv run python bench/learning/learn_phases.py [--jobs N] TRACE_FILE...

Prints each phase's CPU seconds (this process and the worker processes it waited for) and wall
seconds, and the load average; for the end-to-end figure use ``learn_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--format", default="auto")
    args = ap.parse_args()
    def cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    last = [cpu(), time.perf_counter()]

    def mark(name: str) -> None:
        c, w = cpu(), time.perf_counter()
        print(f"{name:32s} CPU {c - last[0]:6.2f} s  wall {w - last[1]:6.2f} s  load avg {os.getloadavg()[0]:.1f}",
              flush=True)
        last[:] = [c, w]

    from immunity.learning.data import collect, read_runs
    from immunity.learning.learn import LearnConfig
    from immunity.learning.pipeline import build_pack

    mark("import")
    items = read_runs(args.paths, args.format, on_problem=lambda _m: None, mapping=False)
    mark(f"read {len(items)} runs")
    by: dict[str | None, list[Any]] = {}
    for it in items:
        by.setdefault(it.run.domain, []).append(it)
    cfg = LearnConfig()
    for domain, its in sorted(by.items(), key=lambda kv: str(kv[0])):
        runs, emb = collect(its, domain=domain, jobs=args.jobs)
        mark(f"feature pass {domain} ({len(its)})")
        build_pack(runs, emb, cfg, name=f"phases-{domain}", domain=domain, jobs=args.jobs)
        mark(f"pack {domain}")


if __name__ == "__main__":
    main()
