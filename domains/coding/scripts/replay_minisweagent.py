"""Replay mini-swe-agent trajectories (SWE-bench Verified) through the coding domain and report how
the commands map and how often each check fires in resolved vs unresolved runs.

    python domains/coding/scripts/replay_minisweagent.py PATH/trajs.jsonl.gz [--limit N]

The data is read by path and never copied. Each assistant message's bash block becomes a ``bash``
tool call; the next user message gives its return code and output.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections import Counter

from immunity.runtime import Runtime
from immunity.testing import FakeRun

BLOCK = re.compile(r"```bash\s*\n(.*?)```", re.S)
RC = re.compile(r"<returncode>(-?\d+)</returncode>")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    actions: Counter[str] = Counter()
    mapped_by: Counter[str] = Counter()
    fired: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    runs: Counter[bool] = Counter()
    n_cmds = 0
    t0 = time.perf_counter()
    with Runtime(domain="coding", store=None, coding={"root": "/testbed"}) as rt:
        with gzip.open(args.path, "rt") as fh:
            for i, line in enumerate(fh):
                if args.limit and i >= args.limit:
                    break
                rec = json.loads(line)
                resolved = bool(rec.get("resolved"))
                runs[resolved] += 1
                msgs = rec["messages"]
                task = next((m["content"] for m in msgs if m["role"] == "user"), "")
                run = FakeRun(rt, task=task, domain="coding")
                classes: set[str] = set()
                for j, m in enumerate(msgs):
                    if m["role"] != "assistant":
                        continue
                    blocks = BLOCK.findall(m["content"])
                    if not blocks:
                        continue
                    cmd = blocks[-1].strip()
                    out = msgs[j + 1]["content"] if j + 1 < len(msgs) else ""
                    rc_m = RC.search(out)
                    rc = int(rc_m.group(1)) if rc_m else None
                    n_cmds += 1
                    d = run.tool("bash", {"command": cmd}, result=out, return_code=rc)
                    step = run.state.last_step
                    actions[step.action_type.value] += 1
                    mapped_by[step.data.get("mapped_by", "?")] += 1
                    for v in d.verdicts:
                        if not v.ok and v.plugin and v.plugin.startswith("coding:"):
                            classes.add(v.plugin.split(":", 1)[1])
                run.end("success" if resolved else "failure")
                for c in classes:
                    fired[resolved][c] += 1
    dt = time.perf_counter() - t0
    print(f"runs: {sum(runs.values())} (resolved {runs[True]}, unresolved {runs[False]}); commands: {n_cmds}")
    print("action types:", dict(actions.most_common()))
    print("mapped by:", dict(mapped_by))
    other = actions.get("OTHER", 0)
    print(f"OTHER: {other} ({other / max(n_cmds, 1):.2%}); no rule matched (heuristic): "
          f"{mapped_by.get('heuristic', 0)} ({mapped_by.get('heuristic', 0) / max(n_cmds, 1):.2%})")
    for c in sorted(set(fired[True]) | set(fired[False])):
        print(f"check {c}: fired in {fired[True][c]}/{runs[True]} resolved ({fired[True][c] / max(runs[True], 1):.1%}) "
              f"and {fired[False][c]}/{runs[False]} unresolved ({fired[False][c] / max(runs[False], 1):.1%}) runs")
    print(f"time: {dt:.1f} s, {1000 * dt / max(n_cmds, 1):.2f} ms per command (whole pipeline)")


if __name__ == "__main__":
    main()
