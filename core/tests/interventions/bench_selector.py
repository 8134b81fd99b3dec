"""Overhead of the selectors per flagged tool_end (in memory): core's ``default`` (the rules alone),
the ``bandit`` default (the rules' action, a learned wording; past its cold start after 5 rewarded
runs) and the escalating bandit (``bandit={"escalate": True}``, with the ``loops`` verifier).

Run: ``.venv/bin/python core/tests/interventions/bench_selector.py`` (prints the load average and CPU
time next to wall time; medians of 3 repeats).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

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


ARMS: dict[str, dict[str, Any]] = {
    "default": {"selector": "default"},
    "bandit (default)": {"selector": "bandit"},
    "bandit, escalating": {"selector": "bandit", "bandit": {"escalate": True}},
}


def once(kw: dict[str, Any]) -> tuple[float, float, float]:
    """(median us, p99 us, CPU s) per flagged tool_end over 200 runs of 10 flagged calls."""
    rt = Runtime(store=None, plugins=[Flag()], seed=1, max_interventions=10**9, cooldown_steps=0, step_budget_ms=0,
                 **kw)
    times = []
    cpu0 = time.process_time()
    for r in range(200):
        run = FakeRun(rt)
        for i in range(10):
            s = run.session
            s.tool_start("flag_me", {"x": i}, tool_call_id=f"c{i}")
            t0 = time.perf_counter()
            s.tool_end("flag_me", "ok", tool_call_id=f"c{i}")
            times.append(time.perf_counter() - t0)
        run.end("success" if r % 2 else "failure")
    cpu = time.process_time() - cpu0
    rt.close()
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6, cpu


print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
for name, kw in ARMS.items():
    reps = [once(kw) for _ in range(3)]
    med = statistics.median(r[0] for r in reps)
    p99 = statistics.median(r[1] for r in reps)
    cpu = statistics.median(r[2] for r in reps)
    print(f"{name:<20} median {med:.0f} us, p99 {p99:.0f} us per flagged tool_end; CPU {cpu:.2f} s per 2000 calls "
          "(medians of 3)")
print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
