"""Overhead of the bandit selector against core's default, per flagged tool_end (in memory).

Run: ``.venv/bin/python core/tests/interventions/bench_selector.py``
"""

from __future__ import annotations

import statistics
import time

from immunity import hookimpl
from immunity.models import Event, Severity, Verdict
from immunity.runtime import Runtime
from immunity.testing import FakeRun


class Flag:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind.value == "tool_end" and event.tool == "flag_me":
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING, message="bad x")
        return None


for sel in ("default", "bandit"):
    rt = Runtime(store=None, selector=sel, plugins=[Flag()], seed=1, max_interventions=10**9, cooldown_steps=0,
                 step_budget_ms=0)
    times = []
    for r in range(200):
        run = FakeRun(rt)
        for i in range(10):
            s = run.session
            s.tool_start("flag_me", {"x": i}, tool_call_id=f"c{i}")
            t0 = time.perf_counter()
            s.tool_end("flag_me", "ok", tool_call_id=f"c{i}")
            times.append(time.perf_counter() - t0)
        run.end("success" if r % 2 else "failure")
    times.sort()
    print(sel, f"median {statistics.median(times) * 1e6:.0f} us, p99 {times[int(len(times) * 0.99)] * 1e6:.0f} us "
               "per flagged tool_end")
    rt.close()
