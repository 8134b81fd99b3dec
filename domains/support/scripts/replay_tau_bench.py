"""Replay tau-bench trajectories through the support domain: how the tools map, and how often each
check fires in successful (reward 1) vs failed (reward 0) runs.

    python domains/support/scripts/replay_tau_bench.py PATH/gpt-4o-airline.json.gz

The data is read by path and never copied. Each assistant turn becomes a model call that sees the
conversation so far; each tool call becomes a tool call with the tool message as its result. A
blocked call is counted and the recorded result is still replayed (the trajectory already happened).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter
from typing import Any

from immunity.runtime import Runtime
from immunity.testing import FakeRun


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    data = json.load(gzip.open(args.path))
    if args.limit:
        data = data[: args.limit]
    tools: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    fired: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    runs: Counter[bool] = Counter()
    n_events = 0
    t0 = time.perf_counter()
    with Runtime(domain="support", store=None) as rt:
        for rec in data:
            ok = float(rec.get("reward") or 0) >= 1.0
            runs[ok] += 1
            run = FakeRun(rt, task=str(rec.get("task_id")), domain="support")
            history: list[dict[str, Any]] = []
            got: set[str] = set()
            traj = rec["traj"]
            for i, msg in enumerate(traj):
                role = msg.get("role")
                if role in ("system", "user"):
                    history.append({"role": role, "content": msg.get("content") or ""})
                    continue
                if role != "assistant":
                    continue
                calls = msg.get("tool_calls") or []
                decisions = []
                if msg.get("content"):
                    run.session.model_start(list(history), model="replay")
                    decisions.append(run.session.model_end(msg["content"], model="replay"))
                    history.append({"role": "assistant", "content": msg["content"]})
                for j, tc in enumerate(calls):
                    name = tc["function"]["name"]
                    try:
                        arguments = json.loads(tc["function"].get("arguments") or "{}")
                    except ValueError:
                        arguments = {}
                    result = traj[i + 1 + j].get("content") if i + 1 + j < len(traj) else ""
                    run.model(None, tool_calls=[{"name": name, "arguments": arguments}], messages=list(history))
                    err = result if str(result).startswith("Error") else None
                    session = run.session
                    start = session.tool_start(name, arguments, tool_call_id=tc.get("id"))
                    end = session.tool_end(name, None if err else result, error=err, tool_call_id=tc.get("id"),
                                           arguments=arguments)
                    decisions += [start, end]
                    step = run.state.last_step
                    tools[name] += 1
                    actions[step.action_type.value] += 1
                    if step.data.get("mapped_by") == "heuristic":
                        unmapped[name] += 1
                    n_events += 2
                for d in decisions:
                    for v in d.verdicts:
                        if not v.ok and v.plugin and v.plugin.startswith("support:"):
                            got.add(v.plugin.split(":", 1)[1])
            run.end("success" if ok else "failure")
            for c in got:
                fired[ok][c] += 1
    dt = time.perf_counter() - t0
    n_calls = sum(tools.values())
    print(f"runs: {sum(runs.values())} (reward 1: {runs[True]}, reward 0: {runs[False]}); tool calls: {n_calls}")
    print("action types:", dict(actions.most_common()))
    print(f"unmapped tool calls: {sum(unmapped.values())} ({sum(unmapped.values()) / max(n_calls, 1):.2%})",
          dict(unmapped))
    for c in sorted(set(fired[True]) | set(fired[False])):
        print(f"check {c}: fired in {fired[True][c]}/{runs[True]} successful ({fired[True][c] / max(runs[True], 1):.1%})"
              f" and {fired[False][c]}/{runs[False]} failed ({fired[False][c] / max(runs[False], 1):.1%}) runs")
    print(f"time: {dt:.1f} s")


if __name__ == "__main__":
    main()
