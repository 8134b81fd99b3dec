"""Per-step overhead of immunity in every installed adapter, through the real frameworks, in one go.

    uv run python bench/bench_overhead.py                       # every adapter, models of 0, 5 and 20 ms
    uv run python bench/bench_overhead.py --runs 10 --latencies 0 --frameworks langgraph
    uv run python bench/bench_overhead.py --json overhead.json  # also write every figure as JSON

Each adapter is driven by the benchmark driver it registers (``immunity_register_bench_drivers``),
so an adapter added later is measured with no change here. One run is the same small task in every
framework: a scripted agent calls one ``lookup`` tool ``--tools`` times, then answers
(``2 * tools + 1`` steps: model calls plus tool calls). The scripted model takes ``latency`` ms per
call (a sleep standing for a real model; 0 is an instant model, so the framework's own cost is all
there is to compare with).

Three arms per adapter and latency, run in rotating order one run each, so that drift on a shared
machine hits all three alike:

- ``none``: the framework alone;
- ``memory``: ``Runtime(store=":memory:")`` (the default runtime: every installed plugin) and
  ``runtime.protect(agent)``, as a user would;
- ``file``: the same with a SQLite file in a temporary directory.

Only the framework's own run call is timed (``RunResult.seconds``): building the agent and
attaching the guard are not. Per run: ms/step = run time / steps. Reported per arm with immunity:
the added ms/step of each run against the run of the plain arm in the same round (median and p95
over the rounds) and the ratio of the median run times. Warm-up runs are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from immunity.bench.drivers import Driver, bench_drivers
from immunity.bench.tasks import (
    Action,
    Answer,
    FaultPlan,
    Observation,
    ScriptedAgent,
    Task,
    ToolCallAction,
    ToolSpec,
)
from immunity.runtime import Runtime

ARMS = ("none", "memory", "file")
DISTRIBUTIONS = {"langgraph": "langgraph", "llamaindex": "llama-index-core", "openai_agents": "openai-agents",
                 "crewai": "crewai"}


class LookupTask(Task):
    """Call ``lookup`` for keys k0..k{n-1}, then answer with the last value."""

    name = "lookup"
    domain = "none"

    def __init__(self, n: int):
        super().__init__(random.Random(0))
        self.n = n
        self.procedure = ["lookup"] * n
        self.system = "You look keys up with the lookup tool, then answer."
        self.prompt = f"Look up the keys k0 to k{n - 1} one after the other and tell me the last value."

    def tools(self) -> list[ToolSpec]:
        def lookup(key: str) -> str:
            return f"the value of {key} is {len(key) * 7}"

        return [ToolSpec("lookup", "Look a key up.", {"key": "string"}, lookup)]

    def next_action(self, obs: Observation, retry_failed: bool) -> Action:
        done = len(obs.tried("lookup"))
        return ToolCallAction("lookup", {"key": f"k{done}"}) if done < self.n else self.finish(obs)

    def finish(self, obs: Observation) -> Action:
        return Answer(f"Done: looked up {len(obs.tried('lookup'))} keys.")

    def judge(self, answer: str | None) -> bool:
        return answer == f"Done: looked up {self.n} keys."


class SlowAgent(ScriptedAgent):
    """The scripted agent, with ``latency`` seconds of model time per call."""

    def __init__(self, task: Task, latency: float):
        super().__init__(task, FaultPlan("none"), 1.0, 0)
        self.latency = latency

    def __call__(self, obs: Observation) -> Action:
        if self.latency:
            time.sleep(self.latency)
        return super().__call__(obs)


def one_run(driver: type[Driver], tools: int, latency: float, runtime: Runtime | None) -> tuple[float, int, float]:
    """(seconds of the framework's run call, steps, CPU seconds of the process during that call,
    every thread: the store's writer and the framework's workers too) for one run; raises if the
    run went wrong."""
    task = LookupTask(tools)
    agent = SlowAgent(task, latency)
    calls = [0]

    def counted(fn: Callable[..., str]) -> Callable[..., str]:
        def call(**kwargs: Any) -> str:
            calls[0] += 1
            return fn(**kwargs)

        return call

    result = driver().run(task, [(spec, counted(spec.fn)) for spec in task.tools()], agent, runtime=runtime)
    if runtime is not None and result.guard is not None:
        runtime.detach(result.guard)
    if result.error is not None or not task.judge(result.answer) or calls[0] != tools:
        raise RuntimeError(f"{driver.name}: the run went wrong: answer={result.answer!r} error={result.error!r} "
                           f"tool calls={calls[0]}")
    return result.seconds, agent.model_calls + calls[0], result.cpu_seconds


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(driver: type[Driver], latency_ms: float, *, runs: int, warmup: int, tools: int,
            tmp: str) -> dict[str, Any]:
    latency = latency_ms / 1000.0
    runtimes = {"none": None, "memory": Runtime(store=":memory:"),
                "file": Runtime(store=os.path.join(tmp, f"{driver.name}-{latency_ms:g}.db"))}
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    steps: set[int] = set()
    try:
        for i in range(warmup + runs):
            order = ARMS[i % 3:] + ARMS[:i % 3]
            for arm in order:
                seconds, n, cpu_s = one_run(driver, tools, latency, runtimes[arm])
                if i >= warmup:
                    times[arm].append(seconds)
                    cpu[arm].append(cpu_s)
                    steps.add(n)
        for rt in runtimes.values():
            if rt is not None:
                rt.flush()
        observed = {arm: len(rt.store.runs(limit=None)) for arm, rt in runtimes.items()
                    if rt is not None and rt.store is not None}
    finally:
        for rt in runtimes.values():
            if rt is not None:
                rt.close()
    if len(steps) != 1:
        raise RuntimeError(f"{driver.name}: runs took different numbers of steps: {sorted(steps)}")
    (n_steps,) = steps
    base = statistics.median(times["none"])
    out: dict[str, Any] = {"framework": driver.name, "latency_ms": latency_ms, "steps": n_steps, "runs": runs,
                           "none": {"ms_per_run": base * 1e3, "ms_per_step": base / n_steps * 1e3,
                                    "cpu_ms_per_step": statistics.median(cpu["none"]) / n_steps * 1e3}}
    for arm in ARMS[1:]:
        med = statistics.median(times[arm])
        added = [(w - p) / n_steps * 1e3 for w, p in zip(times[arm], times["none"], strict=True)]
        added_cpu = [(w - p) / n_steps * 1e3 for w, p in zip(cpu[arm], cpu["none"], strict=True)]
        out[arm] = {"ms_per_run": med * 1e3, "ms_per_step": med / n_steps * 1e3,
                    "added_ms_per_step_median": statistics.median(added), "added_ms_per_step_p95": _p95(added),
                    "cpu_ms_per_step": statistics.median(cpu[arm]) / n_steps * 1e3,
                    "added_cpu_ms_per_step_median": statistics.median(added_cpu),
                    "ratio": med / base, "runs_recorded": observed.get(arm)}
    return out


def _versions(names: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ["immunity", *[DISTRIBUTIONS.get(n, n) for n in names]]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def render(results: list[dict[str, Any]]) -> str:
    head = (f"{'framework':<14}{'model':>7}{'steps':>6}{'without':>11}  "
            f"{'store':<7}{'with':>9}{'added med':>11}{'added p95':>11}{'ratio':>7}{'cpu added':>11}")
    lines = [head, "-" * len(head)]
    for r in results:
        for k, arm in enumerate(ARMS[1:]):
            a = r[arm]
            first = (f"{r['framework']:<14}{r['latency_ms']:>5g}ms{r['steps']:>6}"
                     f"{r['none']['ms_per_step']:>8.3f} ms") if k == 0 else " " * 38
            lines.append(f"{first}  {arm:<7}{a['ms_per_step']:>6.3f} ms{a['added_ms_per_step_median']:>+8.3f} ms"
                         f"{a['added_ms_per_step_p95']:>+8.3f} ms{a['ratio']:>7.3f}"
                         f"{a['added_cpu_ms_per_step_median']:>+8.3f} ms")
    lines.append("per step; 'added': with minus without immunity in the same round, median and p95 over rounds; "
                 "ratio: median run with / without; 'cpu added': the same for the process's CPU time (all threads)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frameworks", default=None, help="comma-separated driver names (default: every one installed)")
    ap.add_argument("--latencies", default="0,5,20", help="model latencies in ms, comma-separated")
    ap.add_argument("--runs", type=int, default=30, help="measured rounds per adapter and latency (one run per arm)")
    ap.add_argument("--warmup", type=int, default=3, help="rounds not counted, per adapter and latency")
    ap.add_argument("--tools", type=int, default=5, help="tool calls per run (steps: 2 * tools + 1)")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    drivers = bench_drivers()
    names = [n.strip() for n in args.frameworks.split(",")] if args.frameworks else \
        [n for n, d in sorted(drivers.items()) if d.available()]
    unknown = [n for n in names if n not in drivers or not drivers[n].available()]
    if unknown:
        ap.error(f"not installed: {unknown}; installed drivers: {sorted(n for n, d in drivers.items() if d.available())}")
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    results: list[dict[str, Any]] = []
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="immunity-overhead-") as tmp:
        for name in names:
            for latency in latencies:
                results.append(measure(drivers[name], latency, runs=args.runs, warmup=args.warmup, tools=args.tools,
                                       tmp=tmp))
                r = results[-1]
                print(f"  {name} {latency:g} ms: +{r['memory']['added_ms_per_step_median']:.3f} ms/step (memory), "
                      f"+{r['file']['added_ms_per_step_median']:.3f} ms/step (file)", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    print(f"immunity overhead per step: {len(names)} adapter(s), {args.tools} tool calls per run, {args.runs} rounds "
          f"after {args.warmup} warm-up, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {elapsed:.0f} s")
    print(render(results))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump({"config": {"frameworks": names, "latencies_ms": latencies, "runs": args.runs,
                                  "warmup": args.warmup, "tools": args.tools, "seconds": round(elapsed, 1),
                                  "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)],
                                  "python": platform.python_version(), "versions": _versions(names)},
                       "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
