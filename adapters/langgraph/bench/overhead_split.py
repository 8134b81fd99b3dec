"""Where an adapter's per-step overhead goes: inside core's event pipeline or outside it.

    uv run python adapters/langgraph/bench/overhead_split.py langgraph 60            # :memory: store
    uv run python adapters/langgraph/bench/overhead_split.py openai_agents 60 none   # no store

Runs the task of ``bench/bench_overhead.py`` (5 tool calls, 11 steps, instant model) through the
adapter's registered benchmark driver, alternating a run without immunity and one with it, and
times every outermost ``RunSession.emit`` call on the agent's thread (core: hooks, verification,
decisions, queueing the store rows, and at run end the store flush). Prints medians per step:
added time, the part inside ``emit``, and the rest (the adapter's own translation and wrappers, the
framework's extra work for them, and contention with the store's writer thread).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from immunity.bench.drivers import bench_drivers
from immunity.runtime import RunSession, Runtime

_spec = importlib.util.spec_from_file_location("bench_overhead",
                                               Path(__file__).resolve().parents[3] / "bench" / "bench_overhead.py")
assert _spec is not None and _spec.loader is not None
bo: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bo)


def main() -> None:
    fw, n = sys.argv[1], int(sys.argv[2])
    store = (None if sys.argv[3] == "none" else sys.argv[3]) if len(sys.argv) > 3 else ":memory:"
    driver = bench_drivers()[fw]
    spent = [0.0]
    inside = threading.local()
    emit = RunSession.emit

    def timed_emit(self: Any, *a: Any, **k: Any) -> Any:
        if getattr(inside, "on", False):
            return emit(self, *a, **k)
        inside.on = True
        t0 = time.perf_counter()
        try:
            return emit(self, *a, **k)
        finally:
            spent[0] += time.perf_counter() - t0
            inside.on = False

    RunSession.emit = timed_emit  # type: ignore[method-assign]
    rt = Runtime(store=store)
    try:
        for _ in range(5):
            bo.one_run(driver, 5, 0, rt)
            bo.one_run(driver, 5, 0, None)
        without, with_, core = [], [], []
        steps = 1
        for _ in range(n):
            without.append(bo.one_run(driver, 5, 0, None)[0])
            spent[0] = 0.0
            seconds, steps, _cpu = bo.one_run(driver, 5, 0, rt)
            with_.append(seconds)
            core.append(spent[0])
    finally:
        RunSession.emit = emit  # type: ignore[method-assign]
        rt.close()

    def med(xs: list[float]) -> float:
        return statistics.median(xs) * 1e3 / steps

    print(f"{fw} (store {store}): {steps} steps; without {med(without):.3f} ms/step, with {med(with_):.3f}; "
          f"added {med([w - x for w, x in zip(with_, without, strict=True)]):.3f} ms/step, of which inside "
          f"RunSession.emit {med(core):.3f}, outside "
          f"{med([w - x - c for w, x, c in zip(with_, without, core, strict=True)]):.3f}")


if __name__ == "__main__":
    main()
