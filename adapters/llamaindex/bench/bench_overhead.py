"""Per-step overhead of immunity on a LlamaIndex FunctionAgent.

The same scripted run (3 model calls, 2 tool calls) with and without immunity attached (in-memory
store, default plugins and options), many runs after a warm-up, interleaved so both see the same
machine state; prints the median wall time per run and per step, and the ratio.

The store writes rows on a background thread. After each protected run the benchmark waits for
that queue to drain, outside the timed part, so the next run starts on a quiet machine; the wait
is reported as its own figure (with a real model the writer works while the model call is in
flight). ``--no-flush`` leaves the writer running into the next runs instead.

    .venv/bin/python adapters/llamaindex/bench/bench_overhead.py [--runs 200] [--checkpoints state|full|none]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

from immunity.runtime import Runtime
from immunity_llamaindex.testing import ScriptedLLM, tool_call
from llama_index.core.agent.workflow import FunctionAgent

STEPS = 5  # model calls + tool calls per run


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny, 21C in {city}"


async def get_time(city: str) -> str:
    """The local time in a city."""
    return f"12:00 in {city}"


def make_agent() -> FunctionAgent:
    llm = ScriptedLLM([tool_call("get_weather", {"city": "Paris"}), tool_call("get_time", {"city": "Paris"}),
                       "Sunny and noon in Paris."])
    return FunctionAgent(tools=[get_weather, get_time], llm=llm, streaming=False)


async def one_run(protect: Any | None) -> float:
    agent = make_agent()  # agent construction is outside the timed part
    guard = protect(agent) if protect is not None else None
    t0 = time.perf_counter()
    result = await agent.run(user_msg="Weather and time in Paris?")
    elapsed = time.perf_counter() - t0
    assert str(result) == "Sunny and noon in Paris."
    if guard is not None:
        guard.uninstrument()
    return elapsed


async def bench(runs: int, warmup: int, checkpoints: str, store: str | None, flush: bool) -> None:
    logging.getLogger("immunity").setLevel(logging.ERROR)
    rt = Runtime(store=store)

    def protect(agent: Any) -> Any:
        return rt.protect(agent, checkpoints=False if checkpoints == "none" else checkpoints)

    def drain() -> float:
        t0 = time.perf_counter()
        if flush:
            rt.flush()
        rt.adapters.clear()  # detached already; keep the runtime's list from growing
        return time.perf_counter() - t0

    for _ in range(warmup):
        await one_run(None)
        await one_run(protect)
        drain()
    base: list[float] = []
    guarded: list[float] = []
    drains: list[float] = []
    for _ in range(runs):
        base.append(await one_run(None))
        guarded.append(await one_run(protect))
        drains.append(drain())
    rt.close()
    b, g = statistics.median(base), statistics.median(guarded)
    print(f"runs={runs} (after {warmup} warm-up pairs), {STEPS} steps per run, checkpoints={checkpoints}, "
          f"store={store}, flush between runs={flush}")
    print(f"without immunity: median {b * 1e3:.2f} ms/run, {b / STEPS * 1e3:.3f} ms/step")
    print(f"with immunity:    median {g * 1e3:.2f} ms/run, {g / STEPS * 1e3:.3f} ms/step")
    print(f"overhead: {(g - b) / STEPS * 1e3:.3f} ms/step, ratio {g / b:.3f} ({(g / b - 1) * 100:+.1f}%)")
    if flush and store is not None:
        print(f"background store writes left at the end of a run: median {statistics.median(drains) * 1e3:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="immunity overhead on a LlamaIndex FunctionAgent")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--checkpoints", default="state", choices=["state", "full", "none"])
    parser.add_argument("--no-flush", action="store_true", help="do not wait for the store between runs")
    parser.add_argument("--store", default=":memory:", help="the runtime's store; 'none' stores nothing")
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.warmup, args.checkpoints, None if args.store == "none" else args.store,
                      not args.no_flush))
