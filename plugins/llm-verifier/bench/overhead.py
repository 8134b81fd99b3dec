"""What the LLM verifier costs a run besides the model's own time, measured in-process with a fake
endpoint that answers at once (so the figures are immunity's side only: tiering, prompt, HTTP
client, parsing, accounting).

    python bench/overhead.py [--events 2000]

Prints microseconds per step for: the verifier off; on, with steps that stay at L1 (no call);
on, with L2 steps (one fake call each).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from immunity.runtime import Runtime
from immunity_llm_verifier.testing import FakeEndpoint, verdict


def per_step_us(tool: str, n: int, **kwargs: Any) -> float:
    rt = Runtime(store=None, **kwargs)
    s = rt.start_run(task="measure the verifier's overhead")
    t0 = time.perf_counter()
    for i in range(n):
        s.tool_start(tool, {"path": f"f{i}"})
        s.tool_end(tool, f"result {i}")
    dt = time.perf_counter() - t0
    rt.close()
    return dt / n * 1e6


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    ep = FakeEndpoint(lambda req: verdict(True))
    on = {"verifiers": ["llm"], "llm_verifier": ep.options(max_calls=10**9, max_tokens=10**12)}
    rows = {
        "off (SEARCH steps)": lambda: per_step_us("search_files", args.events),
        "on, L1 steps (SEARCH, no call)": lambda: per_step_us("search_files", args.events, **on),
        "off (EXECUTE steps)": lambda: per_step_us("run_script", args.events),
        "on, L2 steps (EXECUTE, one fake call each)": lambda: per_step_us("run_script", args.events, **on),
    }
    out = {}
    for name, fn in rows.items():
        out[name] = statistics.median(fn() for _ in range(args.repeat))
        print(f"{name:<45} {out[name]:8.1f} us/step")
    return out


if __name__ == "__main__":
    main()
