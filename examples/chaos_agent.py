"""A support agent (LangGraph, scripted model, offline) that refunds customers' orders, protected
by immunity; its tools and model go through ``immunity.chaos`` so a chaos experiment can reach them.

    .venv/bin/python examples/chaos_agent.py --runs 5 --store runs.db          # no chaos: all succeed
    immunity chaos run examples/chaos.toml -- .venv/bin/python examples/chaos_agent.py --store runs.db

Outside ``immunity chaos run`` the ``chaos`` calls return what they were given, so the same script
runs in production and under an experiment. The agent itself is :mod:`immunity.chaos.fleet`'s
scripted support agent driven through LangGraph's prebuilt ReAct agent.
"""

from __future__ import annotations

import argparse

from immunity import chaos
from immunity.chaos.fleet import run_fleet
from immunity.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--store", default="immunity.db")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rt = Runtime(store=args.store, domain="support", support={"require_confirmation": False},
                 recovery={"base_delay": 0.001, "max_delay": 0.01})
    try:
        # chaos.current() is the experiment `immunity chaos run` switched on, or None
        results = run_fleet(rt, runs=args.runs, chaos=chaos.current(), seed=args.seed)
    finally:
        rt.close()
    for r in results:
        print(f"{r.run_id}  {r.outcome:<8} {r.answer}")


if __name__ == "__main__":
    main()
