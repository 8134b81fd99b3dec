"""Per-step overhead of immunity on CrewAI: the same scripted crew run with and without the adapter.

    .venv/bin/python adapters/crewai/bench/bench_overhead.py [--runs 200] [--warmup 20]

Each run is one kickoff of a one-agent crew on the real CrewAI runtime with a scripted model:
three tool calls and a final answer (4 model calls, 3 tool calls = 7 steps). The two variants are
interleaved run by run, so drift on the machine hits both alike. Prints the median wall time per
run and per step for both, and their ratio. Store: ":memory:".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

_home = tempfile.mkdtemp(prefix="immunity-bench-")
for _k, _v in {"HOME": _home, "CREWAI_STORAGE_DIR": os.path.join(_home, "crewai"), "CREWAI_TESTING": "true",
               "CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_DISABLE_TRACKING": "true",
               "CREWAI_DISABLE_VERSION_CHECK": "true", "CREWAI_TRACING_ENABLED": "false",
               "OTEL_SDK_DISABLED": "true"}.items():
    os.environ[_k] = _v

import logging  # noqa: E402

from crewai import Agent, Crew, Task  # noqa: E402
from crewai.tools import BaseTool  # noqa: E402
from immunity.runtime import Runtime  # noqa: E402
from immunity_crewai.adapter import CrewAIAdapter  # noqa: E402
from immunity_crewai.testing import ScriptedLLM, ToolCall  # noqa: E402

STEPS = 7  # 4 model calls + 3 tool calls


class Lookup(BaseTool):
    name: str = "lookup"
    description: str = "Look up the value stored under a key."

    def _run(self, key: str) -> str:
        return f"value-of-{key}"


def build() -> Crew:
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), ToolCall("lookup", {"key": "b"}),
                              ToolCall("lookup", {"key": "c"}), "a, b and c are known."])
    agent = Agent(role="analyst", goal="look values up", backstory="careful", llm=llm, tools=[Lookup()],
                  verbose=False, cache=False)
    task = Task(description="Find a, b and c", expected_output="the values", agent=agent)
    return Crew(agents=[agent], tasks=[task], verbose=False, cache=False)


def timed(crew: Crew) -> float:
    t0 = time.perf_counter()
    crew.kickoff()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--task-retries", type=int, default=1, help="the adapter's task_retries option")
    args = parser.parse_args()
    logging.getLogger("immunity").setLevel(logging.ERROR)

    rt = Runtime(store=":memory:")
    adapter = CrewAIAdapter(rt, task_retries=args.task_retries)
    base: list[float] = []
    guarded: list[float] = []
    immunity_s: list[float] = []
    try:
        for i in range(args.warmup + args.runs):
            # crews are built and the adapter attached/detached outside the timing; the plain run has
            # no immunity hook registered at all (CrewAI's hook layer costs something by itself)
            plain_crew, guarded_crew = build(), build()
            order = ["plain", "guarded"] if i % 2 == 0 else ["guarded", "plain"]
            for name in order:
                if name == "plain":
                    dt = timed(plain_crew)
                else:
                    adapter.instrument(guarded_crew)
                    n_before = len(rt.sessions)
                    dt = timed(guarded_crew)
                    adapter.uninstrument()
                    if i >= args.warmup and len(rt.sessions) > n_before:
                        immunity_s.append(sum(list(rt.sessions.values())[-1].timings))
                if i >= args.warmup:
                    (base if name == "plain" else guarded).append(dt)
        rt.flush()
    finally:
        adapter.uninstrument()
        rt.close()

    b, g = statistics.median(base), statistics.median(guarded)
    print(f"crewai scripted crew, {STEPS} steps per run, {args.runs} runs each after {args.warmup} warm-up runs")
    print(f"without immunity: {b * 1000:8.3f} ms/run  {b / STEPS * 1000:7.3f} ms/step")
    print(f"with immunity:    {g * 1000:8.3f} ms/run  {g / STEPS * 1000:7.3f} ms/step")
    print(f"overhead: {(g - b) / STEPS * 1000:.3f} ms/step; ratio with/without = {g / b:.3f} "
          f"({(g / b - 1) * 100:+.1f}%)")
    if immunity_s:
        m = statistics.median(immunity_s)
        print(f"time inside immunity's runtime (RunSession.emit) per run: median {m * 1000:.3f} ms "
              f"({m / g * 100:.1f}% of a guarded run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
