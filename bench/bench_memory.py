"""RSS growth of one long run through the runtime (core's built-ins, a file store), one line.

    python bench/bench_memory.py [--steps 1000000] [--store file|none]

Each step is a tool call (tool_start + tool_end) with arguments and a result that vary, so
signatures and results do not repeat; every 50th step is a model call with a growing message
history (the store keeps each message once). RSS is read from /proc/self/statm after a warm-up of
2,000 steps and at the end; the store is flushed before the last reading.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")

from immunity.runtime import Runtime  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--store", default="file", choices=["file", "none"])
    a = ap.parse_args()
    store = str(Path(tempfile.mkdtemp()) / "long.db") if a.store == "file" else None
    rt = Runtime(store=store)
    s = rt.start_run(task="a very long run")
    history = [{"role": "user", "content": "go on " * 50}]

    def step(i: int) -> None:
        if i % 50 == 0:
            history.append({"role": "assistant", "content": f"step {i}: " + "thinking " * 30})
            s.model_start(history[-200:], model="m")
        s.tool_start("read_file", {"path": f"src/module_{i}.py"}, tool_call_id=f"c{i}")
        s.tool_end("read_file", f"line {i}\n" * 20, tool_call_id=f"c{i}")

    for i in range(2000):
        step(i)
    gc.collect()
    base = rss_mb()
    t0 = time.perf_counter()
    for i in range(2000, a.steps):
        step(i)
    if rt.store is not None:
        rt.store.flush()
    gc.collect()
    end = rss_mb()
    dt = time.perf_counter() - t0
    print(f"one run of {a.steps:,} steps (store={a.store}): RSS {base:.0f} MB after 2,000 steps -> {end:.0f} MB "
          f"at the end: growth {end - base:.0f} MB; {dt / max(a.steps - 2000, 1) * 1e6:.0f} us/step; steps held in "
          f"memory {len(list(s.state.steps))}")
    s.end("success")
    rt.close()


if __name__ == "__main__":
    main()
