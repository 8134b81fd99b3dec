"""``immunity explain``: the step most likely to be the decisive error of a failed run.

With successful runs of the same task at hand, the answer is where the failed run diverges from
them (the alignment learning uses). Otherwise the run is scored with a pack and the answer is the
step where the risk rose the most, with the patterns that matched there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from immunity.learning.data import collect, outcome_label, score_items, task_key
from immunity.learning.evaluate import explain_step
from immunity.learning.learn import classify, divergence


def _find(run_id: str, items: list[Any]) -> Any:
    exact = [it for it in items if it.run.run_id == run_id]
    if exact:
        return exact[0]
    pref = [it for it in items if it.run.run_id.startswith(run_id)]
    if len(pref) == 1:
        return pref[0]
    if len(pref) > 1:
        raise LookupError(f"{run_id!r} is the prefix of {len(pref)} runs; give more of the id")
    raise LookupError(f"no run {run_id!r} in the input")


def _snippet(step: Any, limit: int = 300) -> str:
    if step is None:
        return ""
    parts = []
    if step.tool:
        parts.append(f"{step.tool}({str(step.arguments)[:150]})")
    if step.text:
        parts.append(step.text[:limit])
    if step.error:
        parts.append(f"error: {step.error[:150]}")
    elif step.result:
        parts.append(f"result: {step.result[:150]}")
    return " | ".join(parts)[:limit]


def explain_run(run_id: str, items: list[Any], packs: list[Any], *, domain: str | None = None,
                max_references: int = 10) -> dict[str, Any]:
    target = _find(run_id, items)
    key = task_key(target.run)
    refs = [it for it in items if it is not target and task_key(it.run) == key and outcome_label(it.run) == 0]
    runs, _emb = collect([target, *refs[:max_references]], domain=domain)
    me = runs[0]
    if me.n == 0:
        raise ValueError(f"run {target.run.run_id} has no steps")
    evidence: list[str] = []
    cls: str | None
    if refs:
        step, ref_tok, ended, _has = divergence(me, runs[1:])
        cls = classify(me.signal_dict(step), me.actions[step], ref_tok, ended, True)
        method = "alignment"
        evidence.append(f"aligned with {len(runs) - 1} successful run(s) of the same task; the first step not "
                        f"covered by the best alignment is {step}")
        if ref_tok:
            evidence.append(f"the successful run did {ref_tok} at this point; this run did "
                            f"{me.actions[step]}:{me.tools[step] or '-'}")
        if ended:
            evidence.append("this run stopped where the successful run went on")
    elif packs:
        scored = next(iter(score_items([target], packs, domain=domain)))
        risk = np.asarray([s.risk for s in scored.scores])
        step = explain_step(risk)
        s = scored.scores[step]
        cls = s.error_class
        method = "risk"
        before = float(risk[step - 1]) if step > 0 else None
        evidence.append(f"risk {'-' if before is None else f'{before:.3f}'} -> {s.risk:.3f} at this step "
                        f"(the largest rise in the run; alarm: {s.alarm})")
        if s.patterns:
            evidence.append(f"matched patterns: {', '.join(s.patterns[:5])}")
    else:
        raise ValueError("explain needs a pack (--pack) or successful runs of the same task in the input")
    sig = me.signal_dict(step)
    shown = {k: v for k, v in sig.items() if v and k != "step"}
    evidence.append("signals at this step: " + (", ".join(f"{k}={v:g}" for k, v in shown.items()) or "none"))
    st = target.steps[step] if step < len(target.steps) else None
    return {"run_id": target.run.run_id, "outcome": target.run.outcome.value, "steps": me.n, "method": method,
            "step": int(step), "action_type": me.actions[step], "tool": me.tools[step], "error_class": cls,
            "evidence": evidence, "snippet": _snippet(st), "labelled_failure_step": target.run.failure_step}
