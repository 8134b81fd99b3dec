"""Replay Who&When multi-agent logs through the research domain: how the messages map, and whether a
check fires at or before the step the annotators marked as the decisive mistake.

    python domains/research/scripts/replay_who_and_when.py PATH/traces.jsonl.gz

The data is read by path and never copied. Every ``history`` item becomes a message (``tool=None``)
from its agent. All runs in this set failed, so the figures say how early a check fires, not how
often it fires on good runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter

from immunity.runtime import Runtime
from immunity.testing import FakeRun


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    args = ap.parse_args()
    records = [json.loads(line) for line in gzip.open(args.path, "rt")]
    actions: Counter[str] = Counter()
    mapped: Counter[str] = Counter()
    fired_any: Counter[str] = Counter()
    fired_by_mistake: Counter[str] = Counter()
    labelled = 0
    with Runtime(domain="research", store=None) as rt:
        for rec in records:
            run = FakeRun(rt, task=rec.get("question"), domain="research")
            try:
                mistake = int(rec.get("mistake_step"))
            except (TypeError, ValueError):
                mistake = None
            labelled += mistake is not None
            first: dict[str, int] = {}
            for i, item in enumerate(rec["history"]):
                d = run.say(item.get("content") or "", agent=item.get("name"))
                step = run.state.last_step
                actions[step.action_type.value] += 1
                mapped[step.data.get("mapped_by", "?")] += 1
                for v in d.verdicts:
                    if not v.ok and v.plugin and v.plugin.startswith("research:"):
                        first.setdefault(v.plugin.split(":", 1)[1], i)
            run.end("failure")
            for check, i in first.items():
                fired_any[check] += 1
                if mistake is not None and i <= mistake:
                    fired_by_mistake[check] += 1
            if first:
                fired_any["(any check)"] += 1
                if mistake is not None and min(first.values()) <= mistake:
                    fired_by_mistake["(any check)"] += 1
    n = sum(actions.values())
    print(f"runs: {len(records)} (with a mistake step: {labelled}); messages: {n}")
    print("action types:", dict(actions.most_common()))
    print("mapped by:", dict(mapped), f"(by a research rule: {mapped['research'] / max(n, 1):.1%})")
    for check in sorted(fired_any):
        print(f"{check}: fired in {fired_any[check]}/{len(records)} runs; at or before the mistake step in "
              f"{fired_by_mistake[check]}/{labelled} ({fired_by_mistake[check] / max(labelled, 1):.1%})")


if __name__ == "__main__":
    main()
