"""Where the LlamaIndex adapter's added time goes: cProfile over many runs of the overhead task.

    uv run python adapters/llamaindex/bench/profile_overhead.py --runs 200 --store :memory:
    uv run python adapters/llamaindex/bench/profile_overhead.py --runs 200 --store none

Runs the task of ``bench/bench_overhead.py`` (a scripted ``FunctionAgent`` calls ``lookup`` 5 times,
then answers: 11 steps) ``--runs`` times without immunity and ``--runs`` times with it, each arm
under cProfile (the agent's thread), and splits the added time per step into:

- ``adapter``: this package's code (span/event handlers, the ``take_step`` / tool wrappers, the
  per-turn checkpoint), not counting the core calls it makes;
- ``core``: immunity core called by the adapter (``RunSession`` methods: emit, hooks, state),
  not counting the store;
- ``store``: ``Store.save`` and what it calls on the agent's thread (the writer thread is counted
  separately, as process CPU minus the agent thread's CPU);
- ``llamaindex``: the rest of the difference: LlamaIndex's dispatcher and workflow machinery
  reacting to the handlers and wrappers (profiled time of the with-arm minus the without-arm
  that none of the above accounts for).

cProfile inflates small calls, so the split is in shares of the profiled difference; the script
also prints unprofiled per-step wall and CPU figures (median of the same runs, without cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_overhead_main", ROOT / "bench" / "bench_overhead.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: the framework's own methods that the adapter's wrappers call: their time is the framework's
_WRAPPED = frozenset({"take_step", "run", "get_tools", "acall", "call", "async_wrapper"})
#: waiting, not working: the event loop's idle poll and lock waits (the store's writer thread
#: holding the interpreter, the run-end flush of ``durability="run"``)
_WAITS = ("<method 'poll' of 'select.epoll' objects>", "<method 'acquire' of '_thread.lock' objects>",
          "<built-in method posix.urandom>")  # a system call that lets the writer take the interpreter


def _kind(filename: str) -> str:
    f = filename.replace(os.sep, "/")
    if "/immunity_llamaindex/" in f:
        return "other" if f.endswith(("/bench.py", "/testing.py")) else "adapter"
    if f.endswith("/immunity/store.py"):
        return "store"
    if "/immunity/" in f or "/immunity_" in f:
        return "core" if "/immunity/bench/" not in f else "other"
    return "other"


def _split(stats: pstats.Stats) -> dict[str, float]:
    """Seconds: the adapter's entry points (called by the framework), the framework's own methods
    its wrappers call, core called by the adapter, the store called by core or the adapter."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out = {"entry": 0.0, "wrapped": 0.0, "core": 0.0, "store": 0.0}
    for func, (_cc, _nc, _tt, _ct, callers) in raw.items():
        kind = _kind(func[0])
        for caller, (_c2, _n2, _t2, ct2) in callers.items():
            ckind = _kind(caller[0])
            if kind == "adapter" and ckind != "adapter":
                out["entry"] += ct2
            elif kind == "other" and ckind == "adapter" and func[2] in _WRAPPED:
                out["wrapped"] += ct2
            elif kind == "core" and ckind == "adapter":
                out["core"] += ct2
            elif kind == "store" and ckind in ("core", "adapter"):
                out["store"] += ct2
    return out


def _own(stats: pstats.Stats, names: tuple[str, ...]) -> float:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return sum(v[2] for f, v in raw.items() if f[2] in names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--store", default=":memory:", help="':memory:' or 'none'")
    ap.add_argument("--tools", type=int, default=5)
    ap.add_argument("--top", type=int, default=25, help="functions listed by added own time")
    args = ap.parse_args(argv)
    bench = _bench_module()
    from immunity.runtime import Runtime
    from immunity_llamaindex.bench import LlamaIndexDriver

    runtime = Runtime(store=None if args.store == "none" else args.store)
    results: dict[str, Any] = {}
    load0 = os.getloadavg()[0]
    for _ in range(20):  # warm-up
        bench.one_run(LlamaIndexDriver, args.tools, 0.0, runtime)
        bench.one_run(LlamaIndexDriver, args.tools, 0.0, None)
    # the profiled arms, then the unprofiled ones; each pair alternates its order run by run
    profs = {"none": cProfile.Profile(), "with": cProfile.Profile()}
    walls: dict[str, list[float]] = {"none2": [], "with2": []}
    others: dict[str, list[float]] = {"none2": [], "with2": []}
    steps = 0
    for pair in (("none", "with"), ("none2", "with2")):
        for i in range(args.runs):
            for arm in (pair if i % 2 else pair[::-1]):
                rt = runtime if arm.startswith("with") else None
                prof = profs.get(arm)
                t0, c0 = time.thread_time(), time.process_time()
                if prof is not None:
                    prof.enable()
                seconds, steps, _cpu = bench.one_run(LlamaIndexDriver, args.tools, 0.0, rt)
                if prof is not None:
                    prof.disable()
                    continue
                thread, cpu = time.thread_time() - t0, time.process_time() - c0
                walls[arm].append(seconds / steps)
                others[arm].append((cpu - thread) / steps)
    for arm, prof in profs.items():
        results[arm] = (pstats.Stats(prof), steps)
    for arm in walls:
        results[arm + "_wall"] = statistics.median(walls[arm])
        results[arm + "_other_threads"] = statistics.median(others[arm])
    runtime.flush()
    runtime.close()
    (s_none, steps), (s_with, _) = results["none"], results["with"]
    per = 1e3 / (args.runs * steps)
    total_none, total_with = s_none.total_tt, s_with.total_tt  # type: ignore[attr-defined]
    split = _split(s_with)
    core = split["core"] - split["store"]
    adapter = split["entry"] - split["wrapped"] - split["core"]
    diff = total_with - total_none
    waits = _own(s_with, _WAITS) - _own(s_none, _WAITS)
    li = diff - adapter - core - split["store"] - waits
    print(f"LlamaIndex adapter profile: {args.runs} runs per arm, {steps} steps a run, store {args.store}, "
          f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"unprofiled wall per step: without {results['none2_wall'] * 1e3:.3f} ms, with {results['with2_wall'] * 1e3:.3f} ms "
          f"(+{(results['with2_wall'] - results['none2_wall']) * 1e3:.3f} ms); other threads' CPU per step: "
          f"without {results['none2_other_threads'] * 1e3:.3f} ms, with {results['with2_other_threads'] * 1e3:.3f} ms")
    print(f"profiled agent thread per step: without {total_none * per:.3f} ms, with {total_with * per:.3f} ms, "
          f"added {diff * per:.3f} ms, of which:")
    for name, sec in (("adapter (own code)", adapter), ("core (emit, hooks, state)", core),
                      ("store.save (agent thread)", split["store"]), ("waiting (writer, flush)", waits),
                      ("llamaindex + rest", li)):
        print(f"  {name:<28}{sec * per:>8.3f} ms/step  {100 * sec / diff if diff else 0:5.1f}%")
    raw: dict[Any, Any] = s_with.stats  # type: ignore[attr-defined]
    mine: dict[str, float] = {}
    for func, (_cc, _nc, tt, _ct, callers) in raw.items():
        if _kind(func[0]) == "adapter":
            mine[f"{func[2]} (own)"] = mine.get(f"{func[2]} (own)", 0.0) + tt
        for caller, (_c2, _n2, _t2, ct2) in callers.items():
            if _kind(caller[0]) == "adapter" and _kind(func[0]) == "other" and func[2] not in _WRAPPED:
                key = f"{caller[2]} -> {func[2]}"
                mine[key] = mine.get(key, 0.0) + ct2
    print("the adapter's own time, by function and by what it calls outside immunity (ms/step):")
    for key, sec in sorted(mine.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {sec * per:7.4f}  {key}")
    # functions by added own time
    own_none = {f: v[2] for f, v in s_none.stats.items()}  # type: ignore[attr-defined]
    rows = sorted(((v[2] - own_none.get(f, 0.0), f) for f, v in s_with.stats.items()),  # type: ignore[attr-defined]
                  reverse=True)[: args.top]
    print(f"top {args.top} functions by added own time (ms/step):")
    for added, (fn, line, name) in rows:
        short = "/".join(fn.replace(os.sep, "/").split("/")[-2:])
        print(f"  {added * per:7.4f}  {short}:{line} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
