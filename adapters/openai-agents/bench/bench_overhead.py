"""Per-step overhead of immunity on the OpenAI Agents SDK.

The same scripted run (a real ``Agent`` with two function tools driven by a scripted model:
``TOOL_CALLS`` tool calls, then a final answer) is timed with and without immunity attached
(store ``:memory:``), in alternating blocks so that drift affects both sides alike. Prints the
median wall time per run and per step for both, and the ratio::

    .venv/bin/python adapters/openai-agents/bench/bench_overhead.py [--runs 200] [--tool-calls 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # no trace export in a benchmark

from agents import Agent, Runner, function_tool  # noqa: E402
from immunity.runtime import Runtime  # noqa: E402
from immunity_openai_agents.testing import ScriptedModel, call  # noqa: E402


@function_tool
def search_docs(query: str) -> str:
    """Search the docs."""
    return f"3 pages about {query}"


@function_tool
def read_page(page: int) -> str:
    """Read one page."""
    return f"page {page}: " + "lorem ipsum " * 20


def script(n: int) -> list[Any]:
    turns: list[Any] = []
    for i in range(n):
        turns.append(call("search_docs", query=f"topic {i}") if i % 2 == 0 else call("read_page", page=i))
    turns.append("Here is the summary.")
    return turns


def make_agent(n: int) -> tuple[Agent, ScriptedModel]:
    model = ScriptedModel(script(n))
    agent = Agent(name="reader", instructions="Read the docs, then summarise.", model=model,
                  tools=[search_docs, read_page])
    return agent, model


async def one_run(agent: Agent, model: ScriptedModel) -> float:
    model.calls.clear()
    t0 = time.perf_counter()
    result = await Runner.run(agent, "Summarise the docs about topics 0-5.")
    elapsed = time.perf_counter() - t0
    assert result.final_output == "Here is the summary."
    return elapsed


async def bench(runs: int, tool_calls: int, block: int, warmup: int, store: str | None) -> dict[str, Any]:
    base_agent, base_model = make_agent(tool_calls)
    prot_agent, prot_model = make_agent(tool_calls)
    rt = Runtime(store=store)
    guard = rt.protect(prot_agent)
    guard.uninstrument()
    for _ in range(warmup):
        await one_run(base_agent, base_model)
        guard.instrument(prot_agent)
        await one_run(prot_agent, prot_model)
        guard.uninstrument()
    base: list[float] = []
    prot: list[float] = []
    while len(base) < runs:
        n = min(block, runs - len(base))
        for _ in range(n):  # no immunity anywhere: the SDK's own default runner, agent untouched
            base.append(await one_run(base_agent, base_model))
        guard.instrument(prot_agent)
        for _ in range(n):
            prot.append(await one_run(prot_agent, prot_model))
        guard.uninstrument()
    rt.flush()
    n_runs = len(rt.store.runs(limit=None)) if rt.store is not None else 0
    steps = tool_calls + 1  # each tool call with its result, then the final answer
    rt.close()
    return {"base": statistics.median(base), "prot": statistics.median(prot), "steps": steps,
            "model_calls": tool_calls + 1, "stored_runs": n_runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--tool-calls", type=int, default=6)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--store", default=":memory:", help='the runtime\'s store; "none" stores nothing')
    args = parser.parse_args(argv)
    import agents

    store = None if args.store.lower() == "none" else args.store
    r = asyncio.run(bench(args.runs, args.tool_calls, args.block, args.warmup, store))
    base, prot, steps = r["base"], r["prot"], r["steps"]
    print(f"openai-agents {agents.__version__}: {args.runs} runs per side after {args.warmup} warm-up runs; "
          f"{steps} steps ({r['model_calls']} model calls, {args.tool_calls} tool calls) per run")
    print(f"without immunity: median {base * 1000:.3f} ms/run, {base / steps * 1000:.3f} ms/step")
    print(f"with immunity:    median {prot * 1000:.3f} ms/run, {prot / steps * 1000:.3f} ms/step "
          f"(store {store}: {r['stored_runs']} runs stored)")
    print(f"overhead: +{(prot - base) / steps * 1000:.3f} ms/step; ratio with/without = {prot / base:.3f} "
          f"({(prot / base - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
