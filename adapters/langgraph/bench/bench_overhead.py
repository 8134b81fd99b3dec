"""Per-step overhead of immunity on LangGraph: the same scripted run with and without immunity.

    .venv/bin/python adapters/langgraph/bench/bench_overhead.py [--runs 200] [--tools 5] [--model-latency-ms 0]

One run: a StateGraph agent <-> ToolNode with the scripted model making ``--tools`` tool calls and
then answering (``2 * tools + 1`` steps: model calls and tool calls). Runs alternate in blocks
between the plain graph and the same graph protected by immunity (``Runtime(store=":memory:")``,
default plugins; ``--store none`` to leave the store out), after a warm-up; the medians are compared. ``--model-latency-ms`` adds a sleep
to every model call to stand for a real model (0: the scripted model answers at once, so LangGraph's
own cost is all there is to compare against).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def build(tools_per_run: int, latency_s: float) -> tuple[Any, Any]:
    from immunity_langgraph.demo import build_graph
    from immunity_langgraph.testing import ScriptedChatModel, tool_call
    from langchain_core.tools import tool

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    def turn(messages: list[Any]) -> Any:
        if latency_s:
            time.sleep(latency_s)
        n = sum(1 for m in messages if m.type == "tool")
        return tool_call("lookup", key=f"k{n}") if n < tools_per_run else "done"

    model = ScriptedChatModel(script=[turn] * (tools_per_run + 1))
    return model, build_graph(model, [lookup])


def one_run(model: Any, graph: Any) -> float:
    model.reset()
    t0 = time.perf_counter()
    out = graph.invoke({"messages": [("user", "look up the keys")]})
    elapsed = time.perf_counter() - t0
    assert out["messages"][-1].content == "done"
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="measured runs per side")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--block", type=int, default=20, help="runs per block; blocks alternate between the sides")
    ap.add_argument("--tools", type=int, default=5, help="tool calls per run")
    ap.add_argument("--model-latency-ms", type=float, default=0.0)
    ap.add_argument("--no-node-events", action="store_true", help="protect(graph, node_events=False)")
    ap.add_argument("--store", default=":memory:", help='the runtime\'s store (":memory:", a path, or "none")')
    args = ap.parse_args()

    from immunity.runtime import Runtime

    model, graph = build(args.tools, args.model_latency_ms / 1000.0)
    rt = Runtime(store=None if args.store == "none" else args.store)
    steps = 2 * args.tools + 1
    plain: list[float] = []
    guarded: list[float] = []
    for _ in range(args.warmup):
        one_run(model, graph)
    options = {"node_events": False} if args.no_node_events else {}
    adapter = rt.protect(graph, **options)
    for _ in range(args.warmup):
        one_run(model, graph)
    rt.detach(adapter)
    while len(plain) < args.runs:
        n = min(args.block, args.runs - len(plain))
        plain += [one_run(model, graph) for _ in range(n)]
        adapter = rt.protect(graph, **options)
        guarded += [one_run(model, graph) for _ in range(n)]
        rt.detach(adapter)
    rt.flush()
    stored = rt.store.count("events") if rt.store is not None else 0
    observed = len(rt.store.runs(limit=None)) if rt.store is not None else len(rt.sessions)
    rt.close()

    mp, mg = statistics.median(plain), statistics.median(guarded)
    print(f"LangGraph scripted run: {args.tools} tool calls + {args.tools + 1} model calls = {steps} steps, "
          f"model latency {args.model_latency_ms:g} ms, {args.runs} runs per side (median)"
          f"{', node events off' if args.no_node_events else ''}, store {args.store}")
    print(f"  without immunity: {mp * 1e3:8.3f} ms/run  {mp / steps * 1e6:8.1f} us/step")
    print(f"  with immunity:    {mg * 1e3:8.3f} ms/run  {mg / steps * 1e6:8.1f} us/step")
    print(f"  overhead:         {(mg - mp) / steps * 1e6:8.1f} us/step  ratio {mg / mp:.3f} "
          f"({(mg / mp - 1) * 100:+.1f}%)")
    print(f"  runs observed: {observed} (expected {args.warmup + args.runs}), events stored: {stored}")


if __name__ == "__main__":
    main()
