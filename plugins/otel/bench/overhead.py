"""What live export costs the agent's thread: microseconds per step with immunity-otel off and on
(an in-memory SDK exporter, so the figure is immunity's and the SDK's side only), and how long the
background thread takes to hand a run's spans to the SDK.

    python plugins/otel/bench/overhead.py [--runs 200] [--steps 10]

Each run: a model call, ``--steps`` tool calls, the end, through the real runtime (FakeRun), no
store. Prints one line per setting; best of 3.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.pop("OTEL_SDK_DISABLED", None)


def _runs(rt, runs: int, steps: int) -> float:
    from immunity.testing import FakeRun

    t0 = time.perf_counter()
    for i in range(runs):
        run = FakeRun(rt, task=f"task {i}", framework="bench")
        run.model("thinking")
        for k in range(steps):
            run.tool("read_file", {"path": f"m{k}.py"}, result="contents")
        run.session.end("success")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    from immunity.runtime import Runtime
    from immunity_otel import exporter_for
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    n_steps = args.runs * (args.steps + 1)
    results = {}
    for setting in ("off", "on"):
        best, drain = float("inf"), 0.0
        for _ in range(3):
            if setting == "on":
                memory = InMemorySpanExporter()
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(memory))
                rt = Runtime(store=None, otel={"tracer_provider": provider})
            else:
                rt = Runtime(store=None)
            seconds = _runs(rt, args.runs, args.steps)
            if setting == "on":
                t0 = time.perf_counter()
                exporter_for(rt.config).flush()
                drain = time.perf_counter() - t0
                spans = len(memory.get_finished_spans())
            rt.close()
            best = min(best, seconds)
        results[setting] = best
        extra = (f"; {spans} spans per pass, background thread still busy {drain * 1000:.0f} ms after the last run"
                 if setting == "on" else "")
        print(f"otel {setting}: {best / n_steps * 1e6:.1f} us per step ({args.runs} runs x {args.steps + 1} steps, "
              f"best of 3){extra}", flush=True)
    print(f"overhead on the agent's thread: {(results['on'] - results['off']) / n_steps * 1e6:.1f} us per step")


if __name__ == "__main__":
    main()
