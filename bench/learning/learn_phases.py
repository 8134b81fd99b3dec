"""Where ``immunity learn``'s time goes, phase by phase, in this process (what the CLI does, one
pack per domain): importing, reading the files with the feature pass (each worker reads its share
of the records, maps the steps, computes the per-step features and signals and embeds the tasks),
then for each domain embedding the signatures, and its pack (patterns per fold, sequence
distances, model fits, calibration).

Usage: uv run python bench/learning/learn_phases.py [--jobs N] TRACE_FILE...

Prints each phase's CPU seconds (this process and the worker processes it waited for, and each part) and wall
seconds, and the load average; for the end-to-end figure use ``learn_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--format", default="auto")
    args = ap.parse_args()
    def cpu() -> tuple[float, float]:
        t = os.times()
        return t.user + t.system, t.children_user + t.children_system

    last = [*cpu(), time.perf_counter()]

    def mark(name: str) -> None:
        (own, workers), w = cpu(), time.perf_counter()
        print(f"{name:32s} CPU {own + workers - last[0] - last[1]:6.2f} s (this process {own - last[0]:5.2f}, "
              f"workers {workers - last[1]:5.2f})  wall {w - last[2]:6.2f} s  load avg {os.getloadavg()[0]:.1f}",
              flush=True)
        last[:] = [own, workers, w]

    from immunity.learning.data import read_features
    from immunity.learning.learn import LearnConfig
    from immunity.learning.pipeline import build_pack

    mark("import")
    feats = read_features(args.paths, args.format, jobs=args.jobs, on_problem=lambda _m: None)
    mark(f"read + feature pass ({len(feats.collected)} runs)")
    cfg = LearnConfig()
    for domain in sorted(feats.domains(), key=str):
        runs, emb = feats.embedded(domain)
        mark(f"embed {domain} ({len(runs)})")
        build_pack(runs, emb, cfg, name=f"phases-{domain}", domain=domain, jobs=args.jobs)
        mark(f"pack {domain}")

if __name__ == "__main__":
    main()
