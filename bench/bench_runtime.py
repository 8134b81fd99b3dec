"""Per-event overhead of the runtime with the installed plugins (core's built-ins alone with
IMMUNITY_DISABLE_PLUGIN_AUTOLOAD=1); no LLM, no framework.

    python bench/bench_runtime.py [--runs 200] [--steps 20] [--store :memory:] [--no-redact]
                                  [--pack PACK --index hnswlib [--cache-size 0]] [--switch-interval S]

With ``--pack`` the ``patterns`` verifier matches every step against the pack (built with
``bench/bench_packs.py --keep DIR``; ``immunity pack index DIR`` saves its hnswlib index) through
the named vector index; one warm-up run is not timed, and the timed runs start once the index is
loaded (or built). This workload repeats few step signatures, so with the signature cache nearly
every step skips the embedding and the search: ``--cache-size 0`` measures every step paying them.

Each step is a model call (model_start + model_end) and a tool call (tool_start + tool_end): four
events through observe -> verify -> intervene (-> recover), the rules verifier, the default policy
and the background store writer. Prints p50 / p99 / mean microseconds per event and per step.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from immunity.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--store", default=":memory:", help=":memory:, 'file' for a temporary file, or none")
    ap.add_argument("--no-redact", action="store_true", help="switch the redaction stage off (to measure its cost)")
    ap.add_argument("--pack", default=None, help="match every step against this pattern pack")
    ap.add_argument("--index", default="brute", help="the vector index for --pack (brute, hnswlib)")
    ap.add_argument("--cache-size", type=int, default=None,
                    help="step signatures whose nearest patterns are kept (0: embed and search every step)")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval in seconds (how long another thread may hold the GIL; Python's "
                         "default 0.005): to see how much of the tail is waiting for the store's writer thread")
    args = ap.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    store = None if args.store == "none" else args.store
    if args.store == "file":
        store = str(Path(tempfile.mkdtemp()) / "bench.db")
    kw: dict = {"redact": {"enabled": False}} if args.no_redact else {}
    if args.pack:
        popts: dict = {"index": args.index}
        if args.cache_size is not None:
            popts["cache_size"] = args.cache_size
        kw.update(verifiers=["patterns"], packs=[args.pack], options={"patterns": popts})
    rt = Runtime(store=store, **kw)
    if args.pack:  # the warm-up run loads the pack and starts loading (or building) the index
        t0 = time.perf_counter()
        w = rt.start_run(task="warm up", framework="bench")
        w.tool_start("search", {"q": 0}, tool_call_id="w0")
        w.tool_end("search", "result", tool_call_id="w0")
        w.end("success")
        t1 = time.perf_counter()
        matcher = dict(rt._verifiers)["patterns"].matcher  # type: ignore[attr-defined]
        matcher.wait_ready()
        print(f"warm-up run of pack {args.pack}: {(t1 - t0) * 1e3:.1f} ms (a pack directory and its index load in "
              f"the background); index {args.index} {matcher.index_source}, ready {time.perf_counter() - t0:.1f} s "
              f"after the first step"
              + (f" ({matcher.index_problem})" if matcher.index_problem else ""))
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:  # garbage-collection pauses, by generation
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses[info["generation"]].append(time.perf_counter() - started.pop())

    gc.callbacks.append(on_gc)
    c0 = time.process_time()
    w0 = time.perf_counter()
    per_event: list[float] = []
    per_step: list[float] = []
    per_event_cpu: list[float] = []  # the calling thread's CPU time: what waiting for a CPU or the GIL does not add
    for r in range(args.runs):
        s = rt.start_run(task=f"task {r % 10}", framework="bench")
        for i in range(args.steps):
            t0 = time.perf_counter()
            calls = (
                (s.model_start, ([{"role": "user", "content": "go"}],), {"model": "m"}),
                (s.model_end, (None,), {"tool_calls": [{"name": "search", "arguments": {"q": i}}],
                                       "usage": {"input_tokens": 100, "output_tokens": 10}}),
                (s.tool_start, ("search", {"q": i % 7}), {"tool_call_id": f"c{i}"}),
                (s.tool_end, ("search", f"result {i % 5}"), {"tool_call_id": f"c{i}"}),
            )
            for fn, a, kw in calls:
                e0, t0_cpu = time.perf_counter(), time.thread_time()
                fn(*a, **kw)
                per_event.append(time.perf_counter() - e0)
                per_event_cpu.append(time.thread_time() - t0_cpu)
            per_step.append(time.perf_counter() - t0)
        s.end("success")
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    gc.callbacks.remove(on_gc)
    t_flush = time.perf_counter()
    rt.close()
    flush = time.perf_counter() - t_flush

    def us(xs: list[float], q: float) -> float:
        return sorted(xs)[int(q * (len(xs) - 1))] * 1e6

    print(f"runtime overhead, {len(rt.pm.get_plugins())} plugins, store={args.store}, pack={args.pack or '-'} (index {args.index}), redaction {'off' if args.no_redact else 'on'}: {args.runs} runs x {args.steps} steps "
          f"({len(per_event)} events)")
    print(f"  per event: p50 {us(per_event, .5):.1f} us   p99 {us(per_event, .99):.1f} us   "
          f"mean {statistics.fmean(per_event) * 1e6:.1f} us")
    print(f"  per event, CPU time of the calling thread: p50 {us(per_event_cpu, .5):.1f} us   "
          f"p99 {us(per_event_cpu, .99):.1f} us")
    print(f"  per step (4 events): p50 {us(per_step, .5):.1f} us   p99 {us(per_step, .99):.1f} us")
    print(f"  final flush and close: {flush * 1000:.1f} ms")
    cached = ""
    if args.pack:
        m = dict(rt._verifiers)["patterns"].matcher  # type: ignore[attr-defined]
        cached = f"; {len(m._cache)} distinct step signatures cached, {m.skipped} steps skipped"
    print("  garbage collections in the timed loop: " + ", ".join(
        f"gen{g} {len(v)} (max {max(v) * 1e3:.2f} ms)" if v else f"gen{g} 0" for g, v in pauses.items()))
    print(f"  timed loop: {wall:.2f} s wall, {cpu:.2f} s CPU (all threads); load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs{cached}")


if __name__ == "__main__":
    main()
