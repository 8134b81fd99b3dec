"""Cost of the per-turn ``checkpoints="state"`` checkpoint in real ``FunctionAgent`` runs.

With no store attached, each turn's state is recorded the adapter's way for that case (a
:class:`~immunity_llamaindex.snapshot.StateSnapshot`: a copy, not encoded) and, on the same state
at the same moment, the way used when a store writes the checkpoint (``ctx.store.to_dict`` on the
turn). Prints, per turn, the median thread CPU of the copy, of encoding the copy afterwards (what
a copy would cost if a store encoded it later), of ``to_dict``, and of
:class:`~immunity_llamaindex.snapshot.StateEncoder` (the way used with a store: the same payload,
encoding again only what changed since the run's previous turn; checked equal to ``to_dict``'s),
with the load average.

    .venv/bin/python adapters/llamaindex/bench/bench_checkpoint.py [--runs 40] [--tools 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import immunity_llamaindex.translate as translate
from immunity.runtime import Runtime
from immunity_llamaindex.snapshot import StateEncoder, StateSnapshot, snapshot_state
from immunity_llamaindex.testing import ScriptedLLM, tool_call
from llama_index.core.agent.workflow import FunctionAgent


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tools", type=int, default=5, help="tool calls per run (turns: tools + 1)")
    args = ap.parse_args()
    copy_ns: list[int] = []
    encode_ns: list[int] = []
    to_dict_ns: list[int] = []
    incremental_ns: list[int] = []
    snaps: list[StateSnapshot] = []
    encoders: dict[int, tuple[Any, StateEncoder]] = {}

    def measured(store: Any, serializer: Any, **_: Any) -> Any:
        t0 = time.thread_time_ns()
        snap = snapshot_state(store, serializer)
        t1 = time.thread_time_ns()
        hit = encoders.get(id(store))
        if hit is None or hit[0] is not store:  # one encoder per run, as the adapter keeps one
            encoders.clear()
            hit = encoders[id(store)] = (store, StateEncoder())
        first = len(copy_ns) % 2  # alternate which of the two runs first
        for k in (first, 1 - first):
            t2 = time.thread_time_ns()
            if k:
                payload = store.to_dict(serializer)
                to_dict_ns.append(time.thread_time_ns() - t2)
            else:
                encoded = hit[1].encode(store)
                incremental_ns.append(time.thread_time_ns() - t2)
        if encoded != payload:
            raise AssertionError("StateEncoder and to_dict disagree")
        copy_ns.append(t1 - t0)
        if isinstance(snap, StateSnapshot):
            snaps.append(snap)
        return snap

    translate.snapshot_state = measured  # type: ignore[assignment]
    rt = Runtime(store=None)
    load0 = os.getloadavg()[0]
    for i in range(args.warmup + args.runs):
        if i == args.warmup:
            copy_ns.clear(), to_dict_ns.clear(), incremental_ns.clear(), snaps.clear()
        llm = ScriptedLLM([tool_call("add", {"a": k, "b": 1}) for k in range(args.tools)] + ["done"])
        agent = FunctionAgent(name="agent", tools=[add], llm=llm)
        guard = rt.protect(agent)

        async def go(agent: FunctionAgent = agent) -> Any:
            return await agent.run(user_msg="add them up")

        asyncio.run(go())
        guard.uninstrument()
    for snap in snaps:  # what the store's writer does with each snapshot
        t0 = time.thread_time_ns()
        snap.to_dict()
        encode_ns.append(time.thread_time_ns() - t0)
    turns = len(copy_ns)
    print(f"state checkpoint per turn: {args.runs} runs x {args.tools + 1} turns ({turns}), "
          f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; median thread CPU")
    print(f"  on the turn, copy (StateSnapshot):       {statistics.median(copy_ns) / 1000:8.1f} us")
    print(f"  later, encoding the copy:                {statistics.median(encode_ns) / 1000:8.1f} us")
    print(f"  on the turn, to_dict:                    {statistics.median(to_dict_ns) / 1000:8.1f} us")
    print(f"  on the turn, StateEncoder (with a store): {statistics.median(incremental_ns) / 1000:8.1f} us")


if __name__ == "__main__":
    main()
