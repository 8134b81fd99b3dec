"""Per-step overhead of immunity on a LlamaIndex FunctionAgent.

The same scripted run (3 model calls, 2 tool calls) with and without immunity attached (in-memory
store, default plugins), many runs after a warm-up, interleaved so both see the same machine
state; prints the median wall time per run and per step, and the ratio.

    .venv/bin/python adapters/llamaindex/bench/bench_overhead.py [--runs 200] [--no-checkpoints]
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


async def bench(runs: int, warmup: int, checkpoints: bool, store: str | None) -> None:
    logging.getLogger("immunity").setLevel(logging.ERROR)
    rt = Runtime(store=store)

    def protect(agent: Any) -> Any:
        return rt.protect(agent, checkpoints=checkpoints)

    for _ in range(warmup):
        await one_run(None)
        await one_run(protect)
    base: list[float] = []
    guarded: list[float] = []
    for _ in range(runs):
        base.append(await one_run(None))
        guarded.append(await one_run(protect))
    rt.close()
    b, g = statistics.median(base), statistics.median(guarded)
    print(f"runs={runs} (after {warmup} warm-up pairs), {STEPS} steps per run, checkpoints={checkpoints}, "
          f"store={store}")
    print(f"without immunity: median {b * 1e3:.2f} ms/run, {b / STEPS * 1e3:.3f} ms/step")
    print(f"with immunity:    median {g * 1e3:.2f} ms/run, {g / STEPS * 1e3:.3f} ms/step")
    print(f"overhead: {(g - b) / STEPS * 1e3:.3f} ms/step, ratio {g / b:.3f} ({(g / b - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="immunity overhead on a LlamaIndex FunctionAgent")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--no-checkpoints", action="store_true", help="do not record context checkpoints")
    parser.add_argument("--store", default=":memory:", help="the runtime's store; 'none' stores nothing")
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.warmup, not args.no_checkpoints, None if args.store == "none" else args.store))
