"""Wrong-but-plausible tool outputs under chaos: does the support domain's ``order_totals``
cross-check catch them, and do the agents survive?

The fleet of ``immunity.chaos.fleet`` (scripted refund agents in LangGraph's prebuilt ReAct
agent, offline) runs each order three ways, with the same seeds:

- ``clean``: no fault, with immunity (false alarms of the cross-check);
- ``off``: a ``wrong_output`` fault on the first order lookup (its total changed by x0.5, x0.8 or
  x1.25), no immunity;
- ``on``: the same fault with immunity; the scripted model follows a hint with probability p.

Outcomes come from the environment (the refund actually made equals the order's total), never
from immunity. Prints rates with Wilson 95% intervals.

    .venv/bin/python bench/bench_chaos_wrong_output.py --runs 40
    .venv/bin/python bench/bench_chaos_wrong_output.py --runs 6      # a quick look
"""

from __future__ import annotations

import argparse
import os
import random
import time

from immunity import chaos
from immunity.bench.drivers import bench_drivers
from immunity.bench.tasks import FaultPlan, ScriptedAgent
from immunity.chaos.fleet import OrderRefundTask
from immunity.report_html import wilson
from immunity.runtime import Runtime

LANGGRAPH = bench_drivers()["langgraph"]  # registered by immunity-langgraph


def one(i: int, arm: str, p: float) -> tuple[bool, bool]:
    """(succeeded, inconsistent_output verdict raised) for order i in this arm."""
    task = OrderRefundTask(random.Random(f"bench-order:{i}"))
    agent = ScriptedAgent(task, FaultPlan("none"), p, i)
    exp = chaos.Experiment.from_dict({"name": "wrong", "seed": i, "fault": [
        {"kind": "wrong_output", "names": ["get_order_details"], "calls": [0]}]})
    rt = None
    if arm != "off":
        rt = Runtime(store=":memory:", domain="support", support={"require_confirmation": False},
                     recovery={"base_delay": 0.001, "max_delay": 0.01})
    try:
        if arm == "clean":
            tools = [(s, s.fn) for s in task.tools()]
            res = LANGGRAPH().run(task, tools, agent, runtime=rt)
        else:
            with chaos.activate(exp) as c:
                tools = [(s, c.tool(s.fn, s.name)) for s in task.tools()]
                res = LANGGRAPH().run(task, tools, agent, runtime=rt)
                assert len(c.injections) == 1
        flagged = False
        if rt is not None:
            rt.flush()
            flagged = bool(rt.store._rows("select 1 from verdicts where error_class = 'inconsistent_output'"))
        return res.error is None and task.judge(res.answer), flagged
    finally:
        if rt is not None:
            rt.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--p", type=float, default=1.0, help="Probability that the scripted model follows a hint.")
    args = ap.parse_args()
    t0 = time.time()
    rows = {}
    for arm in ("clean", "off", "on"):
        out = [one(i, arm, args.p) for i in range(args.runs)]
        rows[arm] = (sum(s for s, _ in out), sum(f for _, f in out))
    n = args.runs
    print(f"wrong_output on the first order lookup, {n} orders per arm, LangGraph, hint-following p={args.p} "
          f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})")
    print(f"{'arm':<34} {'succeeded':>22} {'inconsistent_output raised':>30}")
    for arm, label in (("clean", "no fault, immunity on"), ("off", "fault, no immunity"),
                       ("on", "fault, immunity on")):
        s, f = rows[arm]
        lo, hi = wilson(s, n)
        flo, fhi = wilson(f, n)
        flag = "-" if arm == "off" else f"{f}/{n} = {f / n:.2f} [{flo:.2f}, {fhi:.2f}]"
        print(f"{label:<34} {f'{s}/{n} = {s / n:.2f} [{lo:.2f}, {hi:.2f}]':>22} {flag:>30}")


if __name__ == "__main__":
    main()
