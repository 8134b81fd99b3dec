"""A stored run as a readable timeline."""

from __future__ import annotations

from typing import Any

from immunity.models import Run


def _short(text: Any, n: int = 100) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def render_run(store: Any, run: Run, *, width: int = 100) -> str:
    """Steps, verdicts, interventions and recoveries of a run, in order, one line each."""
    lines = [
        f"run {run.run_id}  {run.framework or '-'} / {run.domain or '-'}  outcome={run.outcome.value}  "
        f"status={run.status}  steps={run.steps}  tokens={run.tokens}",
    ]
    if run.task:
        lines.append(f"task: {_short(run.task, width)}")
    skipped = run.metadata.get("skipped_plugins") if isinstance(run.metadata, dict) else None
    for name, why in (skipped.items() if isinstance(skipped, dict) else []):
        lines.append(f"skipped plugin {name}: {_short(why, width - 20)}")
    rows: list[tuple[float, int, str]] = []
    for s in store.steps(run.run_id):
        what = s.tool or "message"
        body = s.arguments if s.tool else s.text
        mark = "x" if s.failed else " "
        line = f"  {s.index:>3} {mark} {s.action_type.value:<8} {what}: {_short(body or '', width - 30)}"
        if s.failed:
            line += f"\n          error: {_short(s.error or s.result or f'return code {s.return_code}', width - 20)}"
        rows.append((s.ts, 0, line))
    for v in store.verdicts(run.run_id):
        rows.append((v.ts, 1, f"      ! verdict {v.error_class} [{v.severity.value}] by {v.plugin}: "
                              f"{_short(v.message, width - 40)}"))
    for iv in store.interventions(run.run_id):
        rows.append((iv.ts, 2, f"      > {iv.kind.value}: {_short(iv.text, width - 20)}"))
    for rc in store.recoveries(run.run_id):
        rows.append((rc.ts, 3, f"      ~ recovery {rc.kind.value}: {_short(rc.reason, width - 25)}"))
    for err in store.plugin_errors(run.run_id):
        rows.append((err["ts"], 4, f"      ? plugin error in {err['plugin']} ({err['hook']}): {_short(err['error'], 60)}"))
    rows.sort(key=lambda r: (r[0], r[1]))
    lines += [r[2] for r in rows]
    if run.final_answer:
        lines.append(f"final answer: {_short(run.final_answer, width)}")
    return "\n".join(lines)
