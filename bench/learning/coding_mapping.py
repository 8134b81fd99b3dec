"""The coding domain's shell-command mapping on real trace files: the faster search against the
plain rule table, command by command (every answer compared), and the time each takes.

Usage: uv run python bench/learning/coding_mapping.py [--repeat R] TRACE_FILE...

Reads the runs without mapping them, then maps every distinct (tool, argument text) of the coding
runs twice: through ``immunity.domain.Domain`` with the coding rules (the plain table: each rule's
expression searched as written) and through the coding domain's own mapping without its cache.
Prints the number compared, the mismatches (must be 0), and the CPU milliseconds of each (median
of R rounds) with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from immunity.domain import Domain, args_text
    from immunity.learning.data import read_runs
    from immunity_coding import DOMAIN, RULES

    runs = read_runs(args.paths, on_problem=lambda _m: None, mapping=False)
    blobs: dict[tuple[str | None, str], None] = {}
    for item in runs:
        if str(item.run.domain) != "coding":
            continue
        for src in item.steps:
            text = src.data.get("_raw_text", src.text)
            blobs[(src.tool, args_text(src.arguments, None if src.tool else text))] = None
    pairs = list(blobs)
    plain = Domain(name="coding", rules=RULES)

    def plain_map() -> list[object]:
        return [plain.map_action(tool, {"command": blob} if tool else None, None if tool else blob)
                for tool, blob in pairs]

    def fast_map() -> list[object]:
        return [DOMAIN._map_blob(tool, blob) for tool, blob in pairs]  # the uncached mapping

    a, b = plain_map(), fast_map()
    mismatches = sum(x != y for x, y in zip(a, b, strict=True))
    print(f"{len(pairs):,} distinct commands and messages of {sum(str(i.run.domain) == 'coding' for i in runs)} "
          f"coding runs compared: {mismatches} mismatches")
    for name, fn in (("plain rule table", plain_map), ("coding domain, uncached", fast_map)):
        times = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        t = statistics.median(times)
        print(f"{name:24s} {t * 1000:7.0f} ms CPU ({t / len(pairs) * 1e6:5.1f} us each; median of {args.repeat}), "
              f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
